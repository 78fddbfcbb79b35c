#!/bin/sh
# What the VM tier (tests/vm/run.sh: ZFS and cgroup v2 in a throwaway QEMU VM) needs on the
# host, on top of scripts/setup.sh (which adds Debian contrib). The VM image itself is made
# and cached by tests/vm/prepare.sh (/var/cache/stockade-vm, keyed on kernel, zfs-dkms and
# harness versions).
set -eu
cd "$(dirname "$0")/.."
sh scripts/setup.sh
PACKAGES="qemu-system-x86 debootstrap cpio kmod zstd bc"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup-vm: installing$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 $missing >/dev/null
fi
