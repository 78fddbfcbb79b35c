#!/bin/bash
# run.sh - run a command in a throwaway Debian 12 VM (kernel 6.1, ZFS, cgroup v2) and return its
# exit code. The project is shared in read-write at its host path and is the command's cwd.
#
#   tests/vm/run.sh [options] -- pytest tests/zfs        # the ZFS tier
#   tests/vm/run.sh --cgroup v2 -- pytest tests/cgroup   # cgroup v2 for real
#   tests/vm/run.sh --smoke                              # pytest-free check of the VM itself
#
#   --zfs                 load the zfs module (default: on)       --no-zfs  don't
#   --cgroup v2|v1|hybrid cgroup layout in the guest (default v2: unified, every controller)
#   --smoke               run tests/vm/smoke.sh instead of a command
#   --mem MB              guest RAM (default 2048)
#   --scratch SIZE        sparse ext4 disk mounted on the guest's /tmp (default 8G; 0 = tmpfs)
#   --timeout SEC         kill the VM after SEC seconds (default 1800); exit 124
#   --env K=V             environment for the command (repeatable)
#   --accel auto|tcg|kvm  auto: KVM only when /dev/kvm is real hardware virtualisation (kvm-pvm
#                         runs a stock kernel >100x slower than TCG)
#   --rebuild             rebuild the cached VM image first (tests/vm/prepare.sh --force)
#   --keep                keep the job directory (console log, scratch disk) for debugging
#
# The first run builds the image (~8 min on 2 cores, cached in /var/cache/stockade-vm, keyed on
# kernel, zfs-dkms and harness versions). Exit code: the command's; 124 on timeout; 125 if the
# VM died before the command finished. Timings go to stderr.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
ZFS=1 CG=v2 MEM=2048 SCRATCH=8G TIMEOUT=1800 ACCEL=auto KEEP=0 REBUILD=0 SMOKE=0
ENVS=()
usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --zfs) ZFS=1; shift;;
    --no-zfs) ZFS=0; shift;;
    --cgroup) CG=$2; shift 2;;
    --smoke) SMOKE=1; shift;;
    --mem) MEM=$2; shift 2;;
    --scratch) SCRATCH=$2; shift 2;;
    --timeout) TIMEOUT=$2; shift 2;;
    --env) ENVS+=("$2"); shift 2;;
    --accel) ACCEL=$2; shift 2;;
    --rebuild) REBUILD=1; shift;;
    --keep) KEEP=1; shift;;
    -h|--help) usage;;
    --) shift; break;;
    *) echo "run.sh: unknown option $1" >&2; usage;;
  esac
done
case "$CG" in v2|v1|hybrid) ;; *) echo "run.sh: --cgroup must be v2, v1 or hybrid" >&2; exit 2;; esac
if [ "$SMOKE" = 1 ]; then set -- bash tests/vm/smoke.sh; fi
[ $# -gt 0 ] || usage

now() { date +%s.%N; }
T0=$(now)
if [ "$REBUILD" = 1 ]; then IMG=$("$HERE/prepare.sh" --force); else IMG=$("$HERE/prepare.sh"); fi \
  || { echo "run.sh: no VM image (tests/vm/prepare.sh failed)" >&2; exit 2; }
INITRD=$("$HERE/lib/initramfs.sh" "$IMG") || { echo "run.sh: initramfs build failed" >&2; exit 2; }
T1=$(now)

if [ "$ACCEL" = auto ]; then
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ]; then ACCEL=kvm; else ACCEL=tcg; fi
fi
case "$ACCEL" in
  kvm) ACCEL_ARGS=(-accel kvm -cpu host); SMP=$(nproc); KARGS="";;
  # TCG: one vCPU (cross-vCPU TLB flushes make fork/exec 2-3x slower with two) and no mmap
  # randomisation (TCG re-translates library code for every new random mapping).
  tcg) ACCEL_ARGS=(-accel tcg,thread=multi,tb-size=512 -cpu max); SMP=1; KARGS="norandmaps";;
  *) echo "run.sh: --accel must be auto, tcg or kvm" >&2; exit 2;;
esac

JOB=$(mktemp -d /tmp/stockade-vm-job.XXXXXX)
QPID=
cleanup() {
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null
  if [ "$KEEP" = 1 ]; then echo "run.sh: job kept in $JOB" >&2; else rm -rf "$JOB"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{ printf '#!/bin/bash\n'; printf '%q ' "$@"; printf '\n'; } > "$JOB/cmd"
echo "$PROJECT" > "$JOB/project"
# The project's venv (host python 3.11) is used through the guest's python3 (also 3.11): its
# site-packages first on the path, then the editable source dirs its .pth files name (a
# PYTHONPATH entry does not read .pth files), so the guest runs the same pytest and plugins.
PYPATH=
SITE=$(ls -d "$PROJECT"/.venv/lib/python3*/site-packages 2>/dev/null | head -1)
if [ -n "$SITE" ]; then
  PYPATH=$SITE
  for pth in "$SITE"/_editable_impl_*.pth "$SITE"/__editable__*.pth; do
    [ -f "$pth" ] || continue
    while read -r line || [ -n "$line" ]; do   # uv writes them without a final newline
      case "$line" in /*) PYPATH="$PYPATH:$line";; esac
    done < "$pth"
  done
else
  for d in "$PROJECT"/core/src "$PROJECT"/backends/*/src; do PYPATH="$PYPATH${PYPATH:+:}$d"; done
fi
{
  printf 'PYTHONPATH=%q\n' "$PYPATH"
  printf 'PYTHONDONTWRITEBYTECODE=1\n'
  printf 'STOCKADE_VM=1\n'
  for e in "${ENVS[@]+"${ENVS[@]}"}"; do printf '%s=%q\n' "${e%%=*}" "${e#*=}"; done
} > "$JOB/env"

DISK_ARGS=()
SCR=0
if [ "$SCRATCH" != 0 ]; then
  truncate -s "$SCRATCH" "$JOB/scratch.img"
  DISK_ARGS=(-drive "file=$JOB/scratch.img,if=none,id=scratch,format=raw,cache=unsafe,aio=threads"
             -device virtio-blk-pci,drive=scratch,serial=stockade-scratch)
  SCR=1
fi
KERNEL=$IMG/vmlinuz; [ -f "$IMG/vmlinux" ] && KERNEL=$IMG/vmlinux
APPEND="console=ttyS0 quiet loglevel=3 panic=-1 rw mitigations=off nokaslr $KARGS"
APPEND="$APPEND stockade.cgroup=$CG stockade.zfs=$ZFS stockade.scratch=$SCR"
[ "$CG" = v2 ] && APPEND="$APPEND cgroup_no_v1=all"

timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 \
  "${ACCEL_ARGS[@]}" -machine q35 -m "$MEM" -smp "$SMP" \
  -nodefaults -no-user-config -display none -no-reboot \
  -kernel "$KERNEL" -initrd "$INITRD" -append "$APPEND" \
  -serial "file:$JOB/console.log" \
  -device virtio-serial-pci -chardev stdio,id=out,signal=off -device virtconsole,chardev=out \
  -fsdev "local,id=fsroot,path=$IMG/rootfs,security_model=none,readonly=on,multidevs=remap" \
  -device virtio-9p-pci,fsdev=fsroot,mount_tag=rootfs \
  -fsdev "local,id=fsjob,path=$JOB,security_model=none" \
  -device virtio-9p-pci,fsdev=fsjob,mount_tag=job \
  -fsdev "local,id=fsproj,path=$PROJECT,security_model=none,multidevs=remap" \
  -device virtio-9p-pci,fsdev=fsproj,mount_tag=project \
  -device virtio-rng-pci \
  "${DISK_ARGS[@]+"${DISK_ARGS[@]}"}" < /dev/null
QRC=$?
T2=$(now)
if [ -f "$JOB/exitcode" ]; then
  RC=$(cat "$JOB/exitcode")
elif [ "$QRC" = 124 ]; then
  echo "run.sh: timeout after ${TIMEOUT}s; guest console:" >&2; tail -n 30 "$JOB/console.log" >&2; RC=124
else
  echo "run.sh: the VM stopped (qemu exit $QRC) before the command finished; guest console:" >&2
  tail -n 30 "$JOB/console.log" >&2; RC=125
fi
printf 'run.sh: accel=%s cgroup=%s zfs=%s image=%s | prepare %.1fs, vm %.1fs (%s) | exit %s\n' \
  "$ACCEL" "$CG" "$ZFS" "$(basename "$IMG")" "$(echo "$T1 - $T0" | bc)" "$(echo "$T2 - $T1" | bc)" \
  "$(cat "$JOB/timing" 2>/dev/null || echo 'no guest timing')" "$RC" >&2
exit "$RC"
