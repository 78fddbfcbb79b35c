#!/bin/sh
# conformance_zfs.sh - the zfs row of the verified feature matrix, made inside the VM on a
# throwaway file-backed pool (this host has no ZFS module):
#
#   tests/vm/run.sh --zfs --cgroup v2 -- sh tests/vm/conformance_zfs.sh docs/.matrix-zfs.md
#
# The output path is relative to the project, which the VM shares read-write. Exit code:
# `stockade conformance`'s (1 when a declared feature fails).
set -u
out=$1
pool=stkmatrix$$
img=$(mktemp /tmp/stockade-test-zpool.XXXXXX)
truncate -s 2G "$img"
zpool create -O mountpoint=none -O canmount=off "$pool" "$img" || exit 1
cleanup() { zpool destroy -f "$pool"; rm -f "$img"; }
trap cleanup EXIT
zfs create "$pool/stockade" || exit 1
python3 -c 'import sys; from stockade.cli.entry import main; sys.exit(main())' \
    --root "/tmp/stockade-test-matrix$$" conformance \
    --isolation linux_ns --quota cgroup --storage zfs --option "zfs.dataset=$pool/stockade" \
    --report md --output "$out"
