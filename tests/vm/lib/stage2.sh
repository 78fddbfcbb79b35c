#!/bin/bash
# stockade VM stage 2: PID 1 on the prepared root. Sets up what the tests need (cgroup layout,
# ZFS module, a scratch ext4 disk on /tmp for file-backed pools, the project share at its
# host path), runs the job's command with its output on the virtio console, writes the exit
# code into the job share and powers off.
# Kernel command line: stockade.cgroup=v2|v1|hybrid stockade.zfs=0|1 stockade.scratch=0|1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
arg() { local x; for x in $(cat /proc/cmdline); do case "$x" in "$1="*) echo "${x#*=}";; esac; done; }
mountpoint -q /proc || mount -t proc proc /proc
t0=$(cut -d' ' -f1 /proc/uptime)
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd
hostname stockade-vm
ip link set lo up 2>/dev/null
# The guest has no network (no NIC: nothing can reach the host's uplink); one dummy link gives
# tests a host interface that instances must not see. 192.0.2.0/24 is TEST-NET-1.
modprobe -q dummy numdummies=0 && ip link add vmhost0 type dummy && ip addr add 192.0.2.1/24 dev vmhost0 \
  && ip link set vmhost0 up
OUT=/dev/hvc0
modprobe -q virtio_console
[ -e $OUT ] || OUT=/dev/ttyS0
stty -F $OUT raw -echo 2>/dev/null
say() { echo "stockade-vm: $*" > $OUT; }

mkdir -p /stockade-job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none job /stockade-job

# /tmp on a real block device: file-backed pools and overlay uppers want a disk file system
# (tmpfs would double-count guest RAM against the ARC).
if [ "$(arg stockade.scratch)" = 1 ]; then
  modprobe -q virtio_blk
  for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/vda ] && break; sleep 0.1; done
  if mkfs.ext4 -q -F -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda && mount /dev/vda /tmp; then
    chmod 1777 /tmp
  else
    say "scratch disk unusable, /tmp is tmpfs"; mount -t tmpfs tmpfs /tmp
  fi
else
  mount -t tmpfs tmpfs /tmp
fi
mount -t tmpfs tmpfs /var/tmp

PROJ=$(cat /stockade-job/project 2>/dev/null)
if [ -n "$PROJ" ]; then
  mkdir -p "$PROJ"
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap,access=client project "$PROJ" \
    || say "cannot mount the project share at $PROJ"
fi

CG=$(arg stockade.cgroup)
case "${CG:-v2}" in
  v2)
    mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
    echo "+cpu +cpuset +io +memory +pids" > /sys/fs/cgroup/cgroup.subtree_control ;;
  v1|hybrid)
    mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
    for c in cpu,cpuacct cpuset memory blkio pids devices freezer net_cls,net_prio perf_event hugetlb; do
      mkdir -p "/sys/fs/cgroup/$c"; mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
    done
    ln -s cpu,cpuacct /sys/fs/cgroup/cpu; ln -s cpu,cpuacct /sys/fs/cgroup/cpuacct
    mkdir -p /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    if [ "$CG" = hybrid ]; then
      mkdir -p /sys/fs/cgroup/unified; mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    fi ;;
esac

# overlay's disk-quota mode puts uppers on a loop-backed btrfs (its conformance class, and
# with cgroup v2 the io.max limits on that loop device)
modprobe -q loop
modprobe -q btrfs || say "modprobe btrfs failed"

if [ "$(arg stockade.zfs)" = 1 ]; then
  modprobe zfs || say "modprobe zfs failed"
fi

# `pytest` means the project's pytest: the job's PYTHONPATH puts the project venv's
# site-packages first, so `python3 -m pytest` picks it over Debian's.
printf '#!/bin/sh\nexec python3 -m pytest "$@"\n' > /usr/local/bin/pytest
chmod 755 /usr/local/bin/pytest

t1=$(cut -d' ' -f1 /proc/uptime)
set -a; [ -f /stockade-job/env ] && . /stockade-job/env; set +a
cd "${PROJ:-/}"
( exec setsid bash /stockade-job/cmd ) < /dev/null > $OUT 2>&1
rc=$?
t2=$(cut -d' ' -f1 /proc/uptime)
echo "boot_s=$t1 setup_s=$(awk -v a="$t1" -v b="$t0" 'BEGIN{print a-b}') command_s=$(awk -v a="$t2" -v b="$t1" 'BEGIN{print a-b}')" > /stockade-job/timing
echo "$rc" > /stockade-job/exitcode
sync
[ -n "$PROJ" ] && umount "$PROJ" 2>/dev/null
umount /stockade-job 2>/dev/null
echo o > /proc/sysrq-trigger
sleep 5
poweroff -f
