"""CRIU's kernel-probe cache where /run is not a tmpfs (checkpoint/kdat.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from stockade_linux_ns.checkpoint import criu, kdat

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_fs_type_is_the_longest_mount_point_above() -> None:
    assert kdat.fs_type("/proc/self") == "proc"
    assert kdat.fs_type("/sys/fs/cgroup/x/y") in ("cgroup2", "tmpfs")
    assert kdat.fs_type("/") != ""


def test_cache_is_made_stamped_remade_and_loaded_by_criu(tmp_path: Path) -> None:
    why = criu.probe_reason()
    if why:
        pytest.skip(why)
    if kdat.fs_type(kdat.RUNDIR) == "tmpfs":
        pytest.skip("/run is a tmpfs here: CRIU keeps its own cache")
    binary = criu.find()
    kdat._done.discard(binary)
    kdat.ensure(binary)
    assert os.path.getsize(kdat.CACHE) > 0
    assert Path(kdat.STAMP).read_text() == kdat._stamp(binary)
    # A stamp of another boot (or binary): removed and made again, never read stale.
    Path(kdat.STAMP).write_text("another-boot\n")
    kdat._done.discard(binary)
    kdat.ensure(binary)
    assert Path(kdat.STAMP).read_text() == kdat._stamp(binary)
    log = tmp_path / "check.log"
    subprocess.run([binary, "check", "-v4", "-o", str(log)], capture_output=True, timeout=60, check=False)
    assert f"Loaded kdat cache from {kdat.CACHE}" in log.read_text()
