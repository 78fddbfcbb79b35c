#!/bin/bash
# prepare.sh - build (or find) the cached VM image for tests/vm/run.sh and print its directory.
#
#   tests/vm/prepare.sh [--force] [--key]
#
# The image is a Debian 12 (bookworm) root file system made with debootstrap, with Debian's
# 6.1 kernel, zfs-dkms built for it (Debian contrib), zfsutils-linux, libzfslinux-dev,
# python3, busybox-static and criu (3.17: enough on 6.1, whose soft-dirty tracking lets the
# checkpoint tests run pre-copy); plus an uncompressed vmlinux. (The initramfs with the boot stages
# is made from it by lib/initramfs.sh, cached next to it under its own hash.)
# It lives in $STOCKADE_VM_CACHE (default /var/cache/stockade-vm) under a key made of the
# kernel ABI, the zfs-dkms version and a hash of this harness, and is rebuilt on a miss.
# A cold build takes ~8 minutes on 2 cores; a hit costs nothing.
#
#   --force   rebuild even if the key is cached
#   --key     print the cache key and exit
#
# Env: STOCKADE_VM_CACHE, STOCKADE_VM_MIRROR (default http://deb.debian.org/debian),
#      STOCKADE_VM_KVER / STOCKADE_VM_ZFS to pin versions instead of asking apt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STOCKADE_VM_CACHE:-/var/cache/stockade-vm}
MIRROR=${STOCKADE_VM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
FORCE=0 KEYONLY=0
for a in "$@"; do
  case "$a" in
    --force) FORCE=1;;
    --key) KEYONLY=1;;
    *) echo "prepare.sh: unknown option $a" >&2; exit 2;;
  esac
done
T0=$(date +%s.%N)
log() { printf '[stockade-vm prepare %5.0fs] %s\n' "$(echo "$(date +%s.%N) - $T0" | bc 2>/dev/null || echo 0)" "$*" >&2; }

harness_hash() {
  # The image depends on this script only: the boot stages live in the initramfs, which
  # lib/initramfs.sh rebuilds in a second when they change, without touching the image.
  (cd "$HERE" && cat prepare.sh lib/extract_vmlinux.py) | sha256sum | cut -c1-12
}
kver() {
  [ -n "${STOCKADE_VM_KVER:-}" ] && { echo "$STOCKADE_VM_KVER"; return; }
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {sub("linux-image-", "", $2); print $2; exit}'
}
zfsver() {
  [ -n "${STOCKADE_VM_ZFS:-}" ] && { echo "$STOCKADE_VM_ZFS"; return; }
  apt-cache policy zfs-dkms 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2; exit}'
}

HASH=$(harness_hash)
KVER=$(kver || true)
ZVER=$(zfsver || true)
if [ -z "$KVER" ] || [ -z "$ZVER" ]; then
  # Offline or contrib not enabled on the host: use the newest image built by this harness.
  found=$(ls -1dt "$CACHE"/*_h"$HASH" 2>/dev/null | while read -r d; do [ -f "$d/ready" ] && echo "$d" && break; done || true)
  if [ -n "$found" ]; then
    [ "$KEYONLY" = 1 ] && basename "$found" || echo "$found"
    exit 0
  fi
  echo "prepare.sh: cannot tell the kernel (${KVER:-?}) or zfs-dkms (${ZVER:-?}) version: enable Debian" \
       "contrib in the host's apt sources and run apt-get update, or set STOCKADE_VM_KVER/STOCKADE_VM_ZFS" >&2
  exit 2
fi
KEY="${KVER}_zfs${ZVER}_h${HASH}"
[ "$KEYONLY" = 1 ] && { echo "$KEY"; exit 0; }
DIR=$CACHE/$KEY
if [ "$FORCE" = 0 ] && [ -f "$DIR/ready" ]; then echo "$DIR"; exit 0; fi

mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
log "waiting for the cache lock" ; flock 9
if [ "$FORCE" = 0 ] && [ -f "$DIR/ready" ]; then echo "$DIR"; exit 0; fi   # built while we waited

for p in qemu-system-x86 debootstrap cpio kmod busybox-static; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "prepare.sh: host package $p is missing (see docs/vm-tier.md)" >&2; exit 2; }
done

log "cache miss: building $KEY"
WORK=$CACHE/.build-$KEY
ROOT=$WORK/rootfs
umount_chroot() { for d in dev/pts dev sys proc; do umount "$ROOT/$d" 2>/dev/null || true; done; }
trap 'umount_chroot' EXIT
umount_chroot
rm -rf "$WORK"
mkdir -p "$WORK"
export DEBIAN_FRONTEND=noninteractive

log "debootstrap $SUITE (minbase, main+contrib)"
debootstrap --variant=minbase --components=main,contrib "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
cat > "$ROOT/etc/apt/sources.list" <<SRC
deb $MIRROR $SUITE main contrib
deb $MIRROR $SUITE-updates main contrib
deb http://deb.debian.org/debian-security $SUITE-security main contrib
SRC
# no daemons get started inside the chroot
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
for d in proc sys dev dev/pts; do mount --bind "/$d" "$ROOT/$d"; done

log "apt-get install in the image: kernel $KVER, zfs-dkms $ZVER (dkms builds the module: the long part)"
chroot "$ROOT" apt-get update -qq
# INITRD=No: the image boots with our own initramfs, Debian's is never used.
chroot "$ROOT" env INITRD=No apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "linux-image-$KVER" "linux-headers-$KVER" dkms build-essential \
  "zfs-dkms=$ZVER" "zfsutils-linux=$ZVER" "libzfslinux-dev=$ZVER" \
  python3 python3-cffi python3-pytest python3-pluggy busybox-static \
  kmod iproute2 procps util-linux mount e2fsprogs btrfs-progs psmisc libnftables1 libseccomp2 criu \
  > "$WORK/apt.log" 2>&1 \
  || { tail -30 "$WORK/apt.log" >&2; exit 1; }
if ! ls "$ROOT/lib/modules/$KVER/updates/dkms/zfs.ko"* >/dev/null 2>&1; then
  log "dkms autoinstall -k $KVER"
  chroot "$ROOT" dkms autoinstall -k "$KVER" >> "$WORK/apt.log" 2>&1
fi
ls "$ROOT/lib/modules/$KVER/updates/dkms/zfs.ko"* >/dev/null 2>&1 \
  || { echo "prepare.sh: zfs.ko was not built for $KVER (see $WORK/apt.log)" >&2; exit 1; }
chroot "$ROOT" depmod "$KVER"
chroot "$ROOT" apt-get clean
umount_chroot

cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
python3 "$HERE/lib/extract_vmlinux.py" "$WORK/vmlinuz" "$WORK/vmlinux" || rm -f "$WORK/vmlinux"
{
  echo "KVER=$KVER"
  echo "ZFS_VERSION=$(chroot "$ROOT" dpkg-query -W -f '${Version}' zfs-dkms)"
  echo "HARNESS=$HASH"
  echo "BUILT=$(date -u +%FT%TZ)"
  echo "BUILD_SECONDS=$(echo "$(date +%s.%N) - $T0" | bc 2>/dev/null || echo '?')"
} > "$WORK/config"
touch "$WORK/ready"
trap - EXIT
rm -rf "$DIR"
mv "$WORK" "$DIR"
log "ready: $DIR ($(du -sh "$DIR" | cut -f1))"
echo "$DIR"
