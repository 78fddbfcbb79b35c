"""Commands are safe when run concurrently: 20 instances at once, nothing leaked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import leftovers
from stockade import Host
from stockade.supervisor_client import shutdown

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def _cli(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stockade", "--root", str(root), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_twenty_concurrent_creates_and_deletes(root_dir: Path) -> None:
    host = Host(root_dir)
    host.run({"name": "warmup", "process": {"args": ["true"]}})  # the default image, once
    procs = [
        _cli(
            root_dir,
            "run",
            "--rm",
            "--name",
            f"c{i}",
            "--memory",
            "32M",
            "--pids",
            "16",
            "--",
            "sh",
            "-c",
            f"hostname; exit {i}",
        )
        for i in range(20)
    ]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=120)
        assert p.returncode == i, (i, out, err)
        assert out.strip() == f"c{i}"
    assert host.instances() == []
    # the warm supervisor keeps the root's empty cgroup parents until it exits
    shutdown(str(host.run_dir))
    assert leftovers(root_dir, host.tag) == []


def test_twenty_concurrent_detached_then_deleted(root_dir: Path) -> None:
    procs = [_cli(root_dir, "create", f"d{i}", "--memory", "32M", "--", "sleep", "60") for i in range(20)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    host = Host(root_dir)
    assert sorted(i.name for i in host.instances()) == sorted(f"d{i}" for i in range(20))
    procs = [_cli(root_dir, "delete", "-f", f"d{i}") for i in range(20)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert host.instances() == []
    host.gc()
    assert leftovers(root_dir, host.tag) == []


def test_same_name_race_has_one_winner(root_dir: Path) -> None:
    host = Host(root_dir)
    host.run({"name": "warmup", "process": {"args": ["true"]}})
    procs = [_cli(root_dir, "create", "same", "--", "true") for _ in range(8)]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes.count(0) == 1, codes
    for p in procs:
        err = p.stderr.read() if p.stderr else ""
        assert p.returncode == 0 or "already exists" in err, err
    host.get("same").delete(force=True)
    host.gc()
    assert leftovers(root_dir, host.tag) == []
