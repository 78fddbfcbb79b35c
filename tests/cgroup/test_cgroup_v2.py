"""The v2 code for real on this host's cgroup2 mount, used alone (cgroup_version = "v2").

Here that mount has no controllers, so limits are refused with a clear line, while the
core files work: directories, cgroup.procs, cgroup.freeze/events, cgroup.kill, cpu.stat.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from cgroup_helpers import Make, needs_root, needs_v2, read
from stockade.errors import UnsupportedFeature
from stockade.spec import InstanceSpec

pytestmark = [needs_root, needs_v2]

BUSY = "while True: pass"


def unified_mount() -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            if " - cgroup2 " in line:
                return line.split()[4]
    raise AssertionError("no cgroup2 mount")


def usage_usec(path: str) -> int:
    for line in read(path, "cpu.stat").splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise AssertionError("no usage_usec")


def test_layout_and_placement(backend_v2: Any, make_v2: Make, host_tag: str) -> None:
    assert backend_v2.layout.mode == "v2"
    ctx = make_v2("v2place")
    [g] = ctx.data["quota"]["groups"]
    assert g["version"] == 2
    own = backend_v2.layout.unified.own_dir
    assert g["path"] == os.path.join(own, "stockade", host_tag, "v2place")
    assert g["path"].startswith(unified_mount())
    assert read(g["path"], "cgroup.type") == "domain"


def test_attach_pids_freeze_thaw_kill(backend_v2: Any, make_v2: Make, spawn: Any) -> None:
    ctx = make_v2("v2life")
    [g] = ctx.data["quota"]["groups"]
    path = g["path"]
    p = spawn(backend_v2, ctx, BUSY)
    time.sleep(0.2)
    assert backend_v2.pids(ctx) == [p.pid]
    assert read(path, "cgroup.procs") == str(p.pid)
    s = backend_v2.stats(ctx)
    assert s.cpu_usage_ns is not None and s.cpu_usage_ns > 0
    assert s.memory_limit is None  # no memory controller on this mount

    backend_v2.freeze(ctx)
    assert "frozen 1" in read(path, "cgroup.events").splitlines()
    u0 = usage_usec(path)
    time.sleep(0.3)
    assert usage_usec(path) == u0
    backend_v2.thaw(ctx)
    assert "frozen 0" in read(path, "cgroup.events").splitlines()
    time.sleep(0.3)
    assert usage_usec(path) > u0 + 10_000

    # Frozen again, then destroyed: cgroup.kill takes a frozen cgroup down too.
    backend_v2.freeze(ctx)
    backend_v2.destroy(ctx)
    assert p.wait(timeout=10) == -9
    assert not os.path.exists(path)
    backend_v2.destroy(ctx)  # idempotent


def test_destroy_takes_sub_cgroups_made_inside(backend_v2: Any, make_v2: Make, spawn: Any) -> None:
    ctx = make_v2("v2nest")
    [g] = ctx.data["quota"]["groups"]
    inner = os.path.join(g["path"], "inner")
    os.mkdir(inner)
    p = spawn(backend_v2, ctx, "import time; time.sleep(60)")
    with open(os.path.join(inner, "cgroup.procs"), "w") as f:
        f.write(str(p.pid))
    assert backend_v2.pids(ctx) == [p.pid]
    backend_v2.destroy(ctx)
    assert p.wait(timeout=10) == -9
    assert not os.path.exists(g["path"])


def test_gc_v2(backend_v2: Any, make_v2: Make, spawn: Any) -> None:
    keep = make_v2("v2keep")
    orphan = make_v2("v2orphan")
    p = spawn(backend_v2, orphan, "import time; time.sleep(60)")
    removed = backend_v2.gc({"v2keep": keep})
    assert [os.path.basename(r) for r in removed] == ["v2orphan"]
    assert p.wait(timeout=10) == -9
    assert os.path.isdir(keep.data["quota"]["groups"][0]["path"])


def test_limits_without_controllers_are_refused(backend_v2: Any, make_v2: Make) -> None:
    have = backend_v2.layout.unified.controllers
    if "memory" in have:
        pytest.skip("this cgroup2 mount has the memory controller")
    spec = InstanceSpec.from_dict({"name": "x", "resources": {"memory": "64M"}})
    [line] = backend_v2.check(spec)
    assert line.startswith("resources.memory: cgroup controller 'memory' is not available")
    assert "cgroup.controllers" in line
    with pytest.raises(UnsupportedFeature, match=r"resources\.memory"):
        make_v2("v2mem", {"memory": "64M"})
    probe = backend_v2.probe()
    assert not probe.ok and "memory" in probe.reason and "cgroup.controllers" in probe.reason


def test_hybrid_also_tracks_in_the_unified_hierarchy(backend: Any, make: Make, spawn: Any) -> None:
    if backend.layout.mode != "hybrid":
        pytest.skip("not a hybrid host")
    ctx = make("hyb")
    unified = [g["path"] for g in ctx.data["quota"]["groups"] if g["version"] == 2]
    assert len(unified) == 1
    p = spawn(backend, ctx, "import time; time.sleep(60)")
    assert read(unified[0], "cgroup.procs") == str(p.pid)
    backend.destroy(ctx)
    assert p.wait(timeout=10) == -9
