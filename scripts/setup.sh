#!/bin/sh
# Set up stockade on a Debian 12 machine, as root: the system packages it uses, uv, and the
# workspace in .venv. Idempotent and quick when everything is already there.
set -eu
cd "$(dirname "$0")/.."

# busybox-static: the built-in default image. libseccomp2: the default seccomp filter.
# gcc + libc6-dev: the conformance suite's static in-instance probe. iproute2, nftables,
# libnftables1: bridged networking. runc, crun, bubblewrap, hyperfine: benchmarks side by side.
# xfsprogs, btrfs-progs: loop-backed file systems in the storage tests.
# binutils-aarch64-linux-gnu, qemu-user-static: the tests assemble linux_ns's exec trampoline
# for both machines it ships for and run the other machine's under qemu.
PACKAGES="busybox-static libseccomp2 python3 python3-venv gcc libc6-dev iproute2 nftables libnftables1
runc crun bubblewrap hyperfine xfsprogs btrfs-progs util-linux binutils-aarch64-linux-gnu
qemu-user-static"

# The ZFS libraries (libzfs_core, libzfs, libnvpair: the zfs storage backend loads them with
# cffi; the headers generate its declarations) are in Debian's contrib component.
CONTRIB=/etc/apt/sources.list.d/stockade-contrib.sources
if ! [ -f "$CONTRIB" ]; then
    cat > "$CONTRIB" <<'SRC'
# stockade: Debian contrib, for the ZFS libraries (libzfslinux-dev) and the VM tier's zfs-dkms
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
fi
PACKAGES="$PACKAGES libzfslinux-dev"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 $missing >/dev/null
fi

# CRIU 4.2.1 for checkpoint/restore and migration (Debian 12's 3.17 fails on kernels >= 6.13;
# < 4.2 cannot dump TCP/UDP sockets on kernels >= 6.16)
sh scripts/setup-criu.sh

# uv, in a venv of its own (Debian's python refuses system-wide pip installs)
if ! [ -x .tools/uv/bin/uv ]; then
    python3 -m venv .tools/uv
    .tools/uv/bin/pip install -q uv
fi
# Debian's own python3.11, named, not whichever 3.11 comes first on PATH (pyenv, a uv
# download): its static, PGO-built interpreter starts ~3 ms sooner than a libpython3.11.so
# build, and every `stockade run` starts one (DESIGN.md, Performance).
.tools/uv/bin/uv sync -q --frozen --python /usr/bin/python3.11 --compile-bytecode
# The workspace's own modules are installed editable: compile them too, so that every run
# loads cached bytecode (the run path has a time budget; see DESIGN.md, Performance).
.venv/bin/python -m compileall -q core/src backends/*/src >/dev/null
