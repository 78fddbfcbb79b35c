"""Each limit applied, visible in the cgroup files and felt from a process inside."""

from __future__ import annotations

import os

import pytest
from stockade import Host

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _cgroup_file(inst, controller: str, name: str) -> str:  # type: ignore[no-untyped-def]
    """Find the instance's cgroup file through the host's view of its first process."""
    pid = inst.pid
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.strip().split(":", 2)
            if controller in ctrls.split(",") or (ctrls == "" and controller == "unified"):
                base = f"/sys/fs/cgroup/{controller}" if ctrls else "/sys/fs/cgroup"
                with open(f"{base}{path}/{name}") as g:
                    return g.read().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


def test_limits_in_cgroup_files(host: Host) -> None:
    inst = host.create(
        {
            "name": "lim",
            "process": {"args": ["sleep", "60"]},
            "resources": {"memory": "64M", "cpus": 0.5, "pids": 64},
        }
    )
    inst.start()
    try:
        assert int(_cgroup_file(inst, "memory", "memory.limit_in_bytes")) == 64 << 20
        assert _cgroup_file(inst, "cpu", "cpu.cfs_quota_us") == "50000"
        assert _cgroup_file(inst, "cpu", "cpu.cfs_period_us") == "100000"
        assert _cgroup_file(inst, "pids", "pids.max") == "64"
        s = inst.stats().quota
        assert s.memory_limit == 64 << 20 and s.pids_limit == 64 and s.cpu_quota == 0.5
        assert s.pids_current is not None and s.pids_current >= 1
    finally:
        inst.delete(force=True)


def test_memory_limit_oom_kills_inside_and_host_is_fine(host: Host) -> None:
    # 200 MiB of anonymous memory in a 64 MiB instance: the kernel kills it, not us
    inst = host.create(
        {
            "name": "oom",
            "resources": {"memory": "64M", "memory_swap": "64M"},
            "process": {"args": ["sh", "-c", "head -c 200m /dev/zero | tail > /dev/null"]},
        }
    )
    inst.start()
    status = inst.wait(timeout=60)
    assert status == 128 + 9 or status != 0, status
    stats = inst.stats().quota
    assert stats.oom_kills is None or stats.oom_kills >= 1
    assert stats.memory_peak is None or stats.memory_peak <= (64 << 20) * 1.1
    inst.delete()
    assert host.run({"name": "after", "process": {"args": ["true"]}}) == 0


def test_fork_loop_stops_at_pids_limit(host: Host) -> None:
    # The loop runs in an exec'd shell: busybox sh gives up at its first failed fork, and
    # the instance's first process must outlive it for the count to be read.
    inst = host.create({"name": "forky", "resources": {"pids": 32}, "process": {"args": ["sleep", "60"]}})
    inst.start()
    try:
        r = inst.run(["sh", "-c", "n=0; while [ $n -lt 200 ]; do sleep 30 & n=$((n+1)); done; echo $n"])
        assert r.exit_status != 0 or int(r.stdout or b"0") < 200  # the loop was stopped
        assert b"fork" in r.stderr.lower() or b"resource" in r.stderr.lower(), r.stderr
        s = inst.stats().quota
        assert s.pids_limit == 32
        assert s.pids_current is not None and 30 <= s.pids_current <= 32, s.pids_current
    finally:
        inst.delete(force=True)
