"""The logic above the file layer: layout parsing, conversions, what v2 writes (no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from stockade.errors import QuotaError
from stockade.spec import IOLimits, Resources
from stockade_linux_ns.cgroup import blockdev, cpulist, detect
from stockade_linux_ns.cgroup.v1 import cpu as v1_cpu
from stockade_linux_ns.cgroup.v2 import core as v2_core
from stockade_linux_ns.cgroup.v2 import cpu as v2_cpu
from stockade_linux_ns.cgroup.v2 import io as v2_io
from stockade_linux_ns.cgroup.v2 import memory as v2_memory

SYSTEMD_V1 = """\
25 0 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
32 25 0:29 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
"""
SYSTEMD_V1_CGROUP = """\
6:pids:/user.slice/user-0.slice/session-1.scope
4:memory:/user.slice/user-0.slice/session-1.scope
3:cpu,cpuacct:/user.slice
1:name=systemd:/user.slice/user-0.slice/session-1.scope
0::/user.slice/user-0.slice/session-1.scope
"""


def test_parse_hybrid_with_comounted_cpu_cpuacct() -> None:
    lay = detect.parse(SYSTEMD_V1, SYSTEMD_V1_CGROUP, v2_controllers=frozenset({"pids", "io"}))
    assert lay.mode == "hybrid"
    cpu = lay.v1_for("cpuacct")
    assert cpu is not None and cpu.controllers == {"cpu", "cpuacct"}
    assert cpu.own_dir == "/sys/fs/cgroup/cpu,cpuacct/user.slice"
    mem = lay.v1_for("memory")
    assert mem is not None and mem.own_dir.endswith("memory/user.slice/user-0.slice/session-1.scope")
    assert len(lay.v1) == 3  # name=systemd is not a controller hierarchy
    # pids is bound to v1, so v2 cannot offer it at the same time.
    assert lay.unified is not None and lay.unified.controllers == {"io"}
    assert lay.where("io") == "v2" and lay.where("pids") == "v1" and lay.where("cpuset") is None


def test_parse_prefer() -> None:
    assert detect.parse(SYSTEMD_V1, SYSTEMD_V1_CGROUP, "v1").unified is None
    lay = detect.parse(SYSTEMD_V1, SYSTEMD_V1_CGROUP, "v2")
    assert lay.mode == "v2" and lay.v1 == ()


def test_parse_pure_v2_leaf_and_namespaced_root() -> None:
    mi = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    lay = detect.parse(mi, "0::/system.slice/x.service/stockade-leaf\n")
    assert lay.mode == "v2"
    # Processes moved into the leaf place stockade/ beside it, where it was made before.
    assert lay.unified is not None and lay.unified.own_dir == "/sys/fs/cgroup/system.slice/x.service"
    # A container that bind-mounted its own sub-tree: the mount root is stripped.
    mi2 = "30 23 0:26 /kube/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    lay2 = detect.parse(mi2, "0::/kube/pod1/app\n")
    assert lay2.unified is not None and lay2.unified.own_dir == "/sys/fs/cgroup/app"
    mi3 = "30 23 0:26 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw\n"
    assert detect.parse(mi3, "0::/\n").unified.mountpoint == "/sys/fs/cgroup x"  # type: ignore[union-attr]


def test_weight_to_shares_is_the_runc_crun_map() -> None:
    assert v1_cpu.weight_to_shares(1) == 2
    assert v1_cpu.weight_to_shares(10000) == 262144
    assert v1_cpu.weight_to_shares(100) == 2597
    # ... the inverse of their shares -> weight: 1 + (shares - 2) * 9999 / 262142.
    assert 1 + ((2597 - 2) * 9999) // 262142 == 99


def test_v2_values() -> None:
    assert v2_cpu.cpu_max(0.5, 100_000) == "50000 100000"
    assert v2_cpu.cpu_max(0.001, 100_000) == "1000 100000"  # CFS minimum
    assert v2_memory.swap_max(64 << 20, 128 << 20) == str(64 << 20)
    assert v2_memory.swap_max(64 << 20, -1) == "max"
    assert v2_io.io_max_line(IOLimits(read_bps=1 << 20, write_iops=0), "8:0") == (
        "8:0 rbps=1048576 wiops=max"
    )
    assert v2_io.io_max_line(IOLimits(), "8:0") is None


def _fake_cgroup(tmp_path: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return str(tmp_path)


def test_v2_memory_apply_writes(tmp_path: Path) -> None:
    d = _fake_cgroup(tmp_path, {"memory.max": "max", "memory.swap.max": "max", "memory.low": "0"})
    v2_memory.apply(d, Resources(memory=64 << 20, memory_swap=96 << 20, memory_reservation=1 << 20))
    assert (tmp_path / "memory.max").read_text() == str(64 << 20)
    assert (tmp_path / "memory.swap.max").read_text() == str(32 << 20)
    assert (tmp_path / "memory.low").read_text() == str(1 << 20)


def test_v2_stats_parse(tmp_path: Path) -> None:
    d = _fake_cgroup(
        tmp_path,
        {
            "memory.current": "1000",
            "memory.max": "max",
            "memory.peak": "2000",
            "memory.events": "low 0\nhigh 0\nmax 4\noom 2\noom_kill 2\noom_group_kill 0\n",
            "io.stat": "8:0 rbytes=10 wbytes=20 rios=1 wios=2\n254:0 rbytes=5 wbytes=0 rios=1 wios=0\n",
            "cpu.stat": "usage_usec 7\nuser_usec 5\n",
            "cpu.max": "150000 100000",
        },
    )
    assert v2_memory.stats(d) == {
        "memory_used": 1000,
        "memory_limit": None,
        "memory_peak": 2000,
        "oom_kills": 2,
    }
    assert v2_io.stats(d) == {"io_read_bytes": 15, "io_write_bytes": 20}
    assert v2_cpu.stats(d) == {"cpu_usage_ns": 7000, "cpu_quota": 1.5}


def test_v2_delegate_enables_down_the_chain(tmp_path: Path) -> None:
    chain: list[str] = []
    for name in ("own", "own/stockade", "own/stockade/tag"):
        p = tmp_path / name
        p.mkdir()
        (p / "cgroup.controllers").write_text("cpu io memory pids")
        (p / "cgroup.subtree_control").write_text("")
        chain.append(str(p))
    v2_core.delegate(chain, {"cpu", "memory", "cpuset"}, {"memory"}, move_ok=False)
    for c in chain:
        assert Path(c, "cgroup.subtree_control").read_text() == "+cpu +memory"


def test_cpulist() -> None:
    assert cpulist.parse("0-2,5") == {0, 1, 2, 5}
    assert cpulist.parse("") == frozenset()
    with pytest.raises(ValueError):
        cpulist.parse("3-1")
    with pytest.raises(ValueError):
        cpulist.parse("a")


def test_partition_maps_to_its_disk(tmp_path: Path) -> None:
    disk = tmp_path / "devices" / "sda"
    part = disk / "sda1"
    part.mkdir(parents=True)
    (disk / "dev").write_text("8:0\n")
    (part / "dev").write_text("8:1\n")
    (part / "partition").write_text("1\n")
    sysfs = tmp_path / "dev-block"
    sysfs.mkdir()
    os.symlink(part, sysfs / "8:1")
    os.symlink(disk, sysfs / "8:0")
    assert blockdev.whole_disk("8:1", str(sysfs)) == "8:0"
    assert blockdev.whole_disk("8:0", str(sysfs)) == "8:0"
    with pytest.raises(ValueError):
        blockdev.whole_disk("sda1", str(sysfs))


def test_bad_option_is_one_line(tmp_path: Path) -> None:
    from stockade.interfaces import BackendConfig
    from stockade_linux_ns.cgroup.backend import CgroupQuota

    with pytest.raises(QuotaError, match="cgroup_version"):
        CgroupQuota(BackendConfig(tmp_path, tmp_path, "x", {"cgroup_version": "v3"}))
