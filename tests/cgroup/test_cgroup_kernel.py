"""The cgroup backend against the real kernel, on this host's layout (v1 or hybrid or v2)."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

import pytest
from cgroup_helpers import Make, needs_root, needs_v1, paths, read
from stockade.errors import QuotaError, UnsupportedFeature
from stockade.features import Feature
from stockade.spec import IOLimits, Resources

pytestmark = [needs_root, needs_v1]

BUSY = "while True: pass"


def usage_ns(ctx: Any) -> int:
    return int(read(paths(ctx)["cpuacct"], "cpuacct.usage"))


def test_declares_and_probes(backend: Any) -> None:
    assert backend.name == "cgroup" and backend.priority == 100
    assert backend.features == {
        Feature.MEMORY_LIMIT,
        Feature.CPU_QUOTA,
        Feature.PIDS_LIMIT,
        Feature.FREEZE,
        Feature.IO_RATE_LIMIT,
    }
    assert backend.semantics.io_limit_on == "block_device"
    assert backend.probe().ok, backend.probe().reason


def test_every_limit_is_in_the_files(backend: Any, make: Make, host_tag: str) -> None:
    ctx = make(
        "limits",
        {
            "memory": "64M",
            "memory_swap": "128M",
            "memory_reservation": "32M",
            "cpus": 0.5,
            "cpu_weight": 100,
            "cpuset_cpus": "0",
            "cpuset_mems": "0",
            "pids": 20,
            "io": {"read_bps": "1M", "write_bps": "2M", "read_iops": 100, "write_iops": 200},
        },
        device="254:0",
    )
    p = paths(ctx)
    # Placement: beneath our own cgroup in each hierarchy (memory is /process_api/<id> here).
    with open("/proc/self/cgroup") as f:
        own_mem = next(x.split(":", 2)[2].strip() for x in f if x.split(":")[1] == "memory")
    assert p["memory"] == os.path.normpath(f"/sys/fs/cgroup/memory/{own_mem}/stockade/{host_tag}/limits")
    for c, path in p.items():
        assert path.endswith(f"/stockade/{host_tag}/limits"), c
        assert os.path.isdir(path)
    m = p["memory"]
    assert read(m, "memory.limit_in_bytes") == str(64 << 20)
    if os.path.exists(os.path.join(m, "memory.memsw.limit_in_bytes")):
        assert read(m, "memory.memsw.limit_in_bytes") == str(128 << 20)
    assert read(m, "memory.soft_limit_in_bytes") == str(32 << 20)
    assert read(p["cpu"], "cpu.cfs_quota_us") == "50000"
    assert read(p["cpu"], "cpu.cfs_period_us") == "100000"
    assert read(p["cpu"], "cpu.shares") == str(2 + (99 * 262142) // 9999)
    assert read(p["cpuset"], "cpuset.cpus") == "0"
    assert read(p["cpuset"], "cpuset.mems") == "0"
    # Intermediate cpusets were filled from their parents, or nothing could join.
    assert read(os.path.dirname(p["cpuset"]), "cpuset.cpus") != ""
    assert read(p["pids"], "pids.max") == "20"
    b = p["blkio"]
    assert read(b, "blkio.throttle.read_bps_device") == f"254:0 {1 << 20}"
    assert read(b, "blkio.throttle.write_bps_device") == f"254:0 {2 << 20}"
    assert read(b, "blkio.throttle.read_iops_device") == "254:0 100"
    assert read(b, "blkio.throttle.write_iops_device") == "254:0 200"
    rules = read(p["devices"], "devices.list").splitlines()
    assert "a *:* rwm" not in rules
    assert {"c 1:3 rwm", "c 136:* rwm", "c *:* m", "b *:* m", "c 5:2 rwm"} <= set(rules)


def test_devices_filter_holds(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("devs")
    # /dev/null is allowed; /dev/vda (block 254:0) is not, even for root.
    code = (
        "import os\nos.open('/dev/null', os.O_RDONLY)\n"
        "try:\n os.open('/dev/vda', os.O_RDONLY)\n print('opened')\n"
        "except PermissionError: print('denied')\n"
    )
    p = spawn(backend, ctx, code)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, err
    assert out.decode().strip() == "denied"


def test_oom_kill_inside_the_limit(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("oom", {"memory": "64M"})
    p = spawn(backend, ctx, "b = b'x' * (200 << 20)\nprint('survived')")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == -9 and b"survived" not in out
    s = backend.stats(ctx)
    assert s.oom_kills is not None and s.oom_kills >= 1
    assert s.memory_limit == 64 << 20
    assert s.memory_peak is not None and s.memory_peak <= (64 << 20) + (1 << 20)
    # The host (this process) is fine and can allocate what the instance could not.
    assert len(b"y" * (200 << 20)) == 200 << 20


def test_fork_loop_stops_at_pids_limit(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("pids", {"pids": 10})
    code = (
        "import os, time\nn = 0\ntry:\n while n < 100:\n  if os.fork() == 0:\n"
        "   time.sleep(60); os._exit(0)\n  n += 1\nexcept OSError as e:\n"
        " print(n, e.errno, flush=True)\ntime.sleep(60)\n"
    )
    p = spawn(backend, ctx, code)
    assert p.stdout is not None
    line = p.stdout.readline().decode().split()
    assert line == ["9", str(errno.EAGAIN)]  # 1 parent + 9 children = pids.max
    s = backend.stats(ctx)
    assert (s.pids_current, s.pids_limit) == (10, 10)
    assert len(backend.pids(ctx)) == 10 and p.pid in backend.pids(ctx)
    # destroy kills the 10 stragglers and leaves no directory behind.
    backend.destroy(ctx)
    p.wait(timeout=10)
    assert p.returncode == -9
    assert all(not os.path.exists(path) for path in paths_of_bagless(backend, ctx))


def paths_of_bagless(backend: Any, ctx: Any) -> list[str]:
    return [g.path for g in backend._planned(ctx)]


def test_cpu_quota_half_a_core(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("cpu", {"cpus": 0.5})
    spawn(backend, ctx, BUSY)
    time.sleep(0.3)
    u0, t0 = usage_ns(ctx), time.monotonic()
    time.sleep(1.0)
    u1, t1 = usage_ns(ctx), time.monotonic()
    cores = (u1 - u0) / ((t1 - t0) * 1e9)
    # 0.5 allowed; the shared, loaded machine may give less, CFS never much more.
    assert 0.15 < cores < 0.62, cores
    assert backend.stats(ctx).cpu_quota == 0.5


def test_freeze_stops_and_thaw_resumes(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("frz")
    spawn(backend, ctx, BUSY)
    time.sleep(0.2)
    backend.freeze(ctx)
    assert read(paths(ctx)["freezer"], "freezer.state") == "FROZEN"
    u0 = usage_ns(ctx)
    time.sleep(0.3)
    assert usage_ns(ctx) == u0
    backend.thaw(ctx)
    assert read(paths(ctx)["freezer"], "freezer.state") == "THAWED"
    time.sleep(0.3)
    assert usage_ns(ctx) > u0 + 10_000_000


def test_destroy_of_a_frozen_instance(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("frzkill")
    p = spawn(backend, ctx, BUSY)
    time.sleep(0.1)
    backend.freeze(ctx)
    groups = [g["path"] for g in ctx.data["quota"]["groups"]]
    backend.destroy(ctx)
    assert p.wait(timeout=10) == -9
    assert not any(os.path.exists(g) for g in groups)
    backend.destroy(ctx)  # idempotent


def test_update_changes_limits_live(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("upd", {"memory": "64M", "memory_swap": "64M", "pids": 10, "cpus": 0.5})
    p = paths(ctx)
    spawn(backend, ctx, "import time; time.sleep(60)")
    # Up: memsw must move before the limit; down: the other way round.
    backend.update(
        ctx, Resources(memory=256 << 20, memory_swap=512 << 20, pids=50, cpus=1.5, cpu_weight=10000)
    )
    assert read(p["memory"], "memory.limit_in_bytes") == str(256 << 20)
    if os.path.exists(os.path.join(p["memory"], "memory.memsw.limit_in_bytes")):
        assert read(p["memory"], "memory.memsw.limit_in_bytes") == str(512 << 20)
    assert read(p["pids"], "pids.max") == "50"
    assert read(p["cpu"], "cpu.cfs_quota_us") == "150000"
    assert read(p["cpu"], "cpu.shares") == "262144"
    backend.update(ctx, Resources(memory=32 << 20, memory_swap=32 << 20))
    assert read(p["memory"], "memory.limit_in_bytes") == str(32 << 20)
    assert read(p["pids"], "pids.max") == "50"  # None leaves a limit as it is
    assert backend.stats(ctx).memory_limit == 32 << 20


def test_io_limits_need_a_block_device(backend: Any, make: Make) -> None:
    with pytest.raises(UnsupportedFeature, match=r"resources\.io: .*no block device"):
        make("noio", {"io": {"read_bps": "1M"}})
    ctx = make("io", {"io": {"write_bps": "1M"}}, device="254:0")
    backend.update(ctx, Resources(io=IOLimits(write_bps=0, read_iops=5)))
    b = paths(ctx)["blkio"]
    assert read(b, "blkio.throttle.write_bps_device") == ""
    assert read(b, "blkio.throttle.read_iops_device") == "254:0 5"


def test_check_says_what_cannot_be_done(backend: Any) -> None:
    from stockade.spec import InstanceSpec

    ok = InstanceSpec.from_dict({"name": "c", "resources": {"memory": "64M", "cpuset_cpus": "0"}})
    assert backend.check(ok) == []
    bad = InstanceSpec.from_dict({"name": "c", "resources": {"cpuset_cpus": "0,64-65"}})
    [line] = backend.check(bad)
    assert line.startswith("resources.cpuset_cpus: '0,64-65' is outside the CPUs allowed here")


def test_gc_removes_orphans_only(backend: Any, make: Make, spawn: Any) -> None:
    keep = make("keep")
    orphan = make("orphan")
    spawn(backend, orphan, "import time; time.sleep(60)")
    removed = backend.gc({"keep": keep})
    assert any(r.endswith("/orphan") for r in removed)
    assert not any(r.endswith("/keep") for r in removed)
    assert all(os.path.isdir(g["path"]) for g in keep.data["quota"]["groups"])
    assert not any(os.path.exists(g["path"]) for g in orphan.data["quota"]["groups"])


def test_destroy_prunes_the_tag_dir(backend: Any, make: Make, host_tag: str) -> None:
    ctx = make("last")
    tag_dirs = {os.path.dirname(g["path"]) for g in ctx.data["quota"]["groups"]}
    backend.gc({"last": ctx})  # whatever other tests left goes first
    backend.destroy(ctx)
    assert not any(os.path.exists(d) for d in tag_dirs)


def test_destroy_without_stored_paths(backend: Any, make: Make) -> None:
    # A process that never saw create's bag (kill -9 before state was saved) still cleans up.
    ctx = make("nobag")
    groups = [g["path"] for g in ctx.data["quota"]["groups"]]
    ctx.data.clear()
    backend.destroy(ctx)
    assert not any(os.path.exists(g) for g in groups)


def test_attach_is_cheap(backend: Any, make: Make, spawn: Any) -> None:
    ctx = make("fast")
    p = spawn(backend, ctx, "import time; time.sleep(60)")
    t = time.perf_counter()
    for _ in range(20):
        backend.attach(ctx, p.pid)
    per_call = (time.perf_counter() - t) / 20
    assert per_call < 0.01, per_call


def test_errors_are_quota_errors(backend: Any, make: Make) -> None:
    ctx = make("err")
    with pytest.raises(QuotaError, match="moving pid"):
        backend.attach(ctx, 2**22 + 12345)  # no such pid


def test_name_clash_leaves_the_other_instance_alone(backend: Any, make: Make, spawn: Any) -> None:
    first = make("clash")
    p = spawn(backend, first, "import time; time.sleep(60)")
    with pytest.raises(QuotaError, match="already exists with processes"):
        make("clash")
    assert p.poll() is None
    assert backend.pids(first) == [p.pid]
    # An empty leftover (a create that crashed) is replaced, limits and all.
    pids_dir = paths(first)["pids"]
    backend.destroy(first)
    p.wait(timeout=10)
    os.makedirs(pids_dir)
    ctx = make("clash", {"pids": 7})
    assert read(paths(ctx)["pids"], "pids.max") == "7"
