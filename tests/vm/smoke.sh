#!/bin/bash
# smoke.sh - pytest-free check of the VM tier, run inside the guest by `tests/vm/run.sh --smoke`.
# Checks: kernel, cgroup v2 controllers enforce a memory limit, the zfs module is loaded, a
# file-backed pool works (create, clone, refquota), and stockade's zfs backend loads libzfs
# through cffi and probes OK on it. Exit 0 when all hold; prints one line per check.
set -u
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
echo "kernel $(uname -r), $(nproc) cpu, $(awk '/MemTotal/ {print int($2/1024) " MiB"}' /proc/meminfo)"

if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  ok "cgroup v2: $(cat /sys/fs/cgroup/cgroup.controllers)"
  cg=/sys/fs/cgroup/stockade-smoke
  mkdir -p $cg && echo $((32 << 20)) > $cg/memory.max && echo 0 > $cg/memory.swap.max
  ( sh -c "echo \$\$ > $cg/cgroup.procs; exec python3 -c 'bytearray(100 << 20)'" ) 2>/dev/null
  rc=$?
  [ $rc = 137 ] && ok "memory.max=32M kills a 100M allocation" || bad "memory.max not enforced (rc $rc)"
  rmdir $cg
else
  ok "cgroup layout: $(awk '$3 ~ /cgroup/ {print $2}' /proc/mounts | tr '\n' ' ')"
fi

if [ -d /sys/module/zfs ]; then
  ok "zfs module $(cat /sys/module/zfs/version)"
  d=$(mktemp -d /tmp/stockade-test-smoke.XXXX)
  pool=stockade-smoke$$
  truncate -s 512M "$d/pool.img"
  if zpool create -o cachefile=none -O mountpoint=none -O canmount=off "$pool" "$d/pool.img"; then
    ok "file-backed pool $pool"
    zfs create -o mountpoint="$d/img" "$pool/img" && echo hello > "$d/img/f" && zfs snapshot "$pool/img@base" \
      && zfs clone -o mountpoint="$d/c1" -o refquota=16M "$pool/img@base" "$pool/c1" \
      && [ "$(cat "$d/c1/f")" = hello ] && ok "snapshot + clone" || bad "snapshot/clone"
    if dd if=/dev/urandom of="$d/c1/big" bs=1M count=64 2>/dev/null; then bad "refquota not enforced"
    else ok "refquota=16M stops a 64M write"; fi
    STOCKADE_SMOKE_POOL=$pool python3 - <<'PY' && ok "stockade_zfs: libzfs via cffi, probe ok" || bad "stockade_zfs"
import os
from pathlib import Path
from stockade.interfaces import BackendConfig
from stockade_zfs.storage import ZfsStorage
pool = os.environ["STOCKADE_SMOKE_POOL"]
b = ZfsStorage(BackendConfig(Path("/tmp"), Path("/run"), "smoke", {"dataset": pool}))
p = b.probe()
print("     probe:", p)
assert p.ok, p.reason
from stockade_zfs import ops
print("     used/available of", pool, ops.props_int(pool, ("used", "available")))
PY
    zpool destroy "$pool" || bad "zpool destroy"
  else
    bad "zpool create on a file"
  fi
  rm -rf "$d"
else
  echo "skip zfs (no module: run with --zfs)"
fi
exit $fail
