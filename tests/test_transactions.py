"""A failure at any create step leaves nothing behind; a kill -9 leaves only what gc removes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import leftovers
from stockade import Host, StockadeError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

STEPS = ["reserve", "storage", "quota", "isolation"]
SPEC = {"name": "tx", "process": {"args": ["sleep", "30"]}, "resources": {"memory": "64M", "pids": 20}}


def _nothing_left(host: Host) -> None:
    assert not host.store.exists("tx")
    assert not (host.store.dir("tx")).exists()
    assert leftovers(host.root, host.tag) == []
    assert host.instances() == []


@pytest.mark.parametrize("step", STEPS)
def test_injected_failure_unwinds_everything(host: Host, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    host.run({"name": "warm", "process": {"args": ["true"]}})  # the image exists already
    monkeypatch.setenv("STOCKADE_FAULT", step)
    with pytest.raises(StockadeError, match=f"injected fault after step '{step}'"):
        host.create(SPEC)
    _nothing_left(host)
    monkeypatch.delenv("STOCKADE_FAULT")
    host.create(SPEC).delete(force=True)  # the name is free again


def test_backend_failure_unwinds_everything(host: Host) -> None:
    bad = dict(SPEC, mounts=[{"source": "/nonexistent/stockade-src", "target": "/data"}])
    with pytest.raises(StockadeError):
        host.create(bad)
    _nothing_left(host)
    with pytest.raises(StockadeError, match="executable file not found"):
        host.create(dict(SPEC, process={"args": ["no-such-command"]}))
    _nothing_left(host)


@pytest.mark.parametrize("via", ["in-process", "supervisor"])
@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_step_then_gc(root_dir: Path, step: str, via: str) -> None:
    """The process doing the create dies by SIGKILL after ``step``: the CLI itself, or the
    supervisor it spawns (which inherits the fault from the command's environment)."""
    env = dict(
        os.environ, STOCKADE_FAULT=f"{step}:kill", STOCKADE_SUPERVISOR="0" if via == "in-process" else "1"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "stockade",
            "--root",
            str(root_dir),
            "run",
            "--name",
            "tx",
            "--memory",
            "64M",
            "--",
            "sleep",
            "30",
        ],
        env=env,
        # not pipes: the instance's waiting process inherits the command's stdio and would
        # keep a pipe open after the command is killed
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    assert r.returncode == (-9 if via == "in-process" else 1)
    host = Host(root_dir)
    gc = subprocess.run(
        [sys.executable, "-m", "stockade", "--root", str(root_dir), "gc"], capture_output=True, text=True
    )
    assert gc.returncode == 0, gc.stderr
    _nothing_left(host)
    # the instance's process, if it got that far, is gone too
    out = subprocess.run(["pgrep", "-f", "sleep 30"], capture_output=True, text=True).stdout.split()
    for pid in out:
        with open(f"/proc/{pid}/cgroup") as f:
            assert host.tag not in f.read()
