"""`stockade checkpoint` / `stockade restore` from the command line: the restored instance
belongs to the root's supervisor, which records its exit status like any detached one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import conftest_helpers  # noqa: F401 (skips the module where CRIU cannot run)
import pytest

# ~4 s here, ~95 s in the VM tier (each CLI call is a Python start-up under TCG emulation)
pytestmark = pytest.mark.timeout(300)

# After /tmp/stop appears it waits a second before it exits: the `exec ... touch` that made
# the file must be gone by then, or PID 1's exit kills it (137; seen under the VM tier's TCG).
LOOP = "i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); echo $i > /tmp/c; sleep 0.02; done; sleep 1; exit 7"


def _cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "stockade", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if check:
        assert r.returncode == 0, f"{args}: {r.stderr}"
    return r


def _status(root: Path, name: str) -> dict[str, object]:
    rows = json.loads(_cli(root, "list", "--format", "json").stdout)
    return next(r for r in rows if r["name"] == name)


def _counter(root: Path, name: str) -> int:
    # The loop's `echo > /tmp/c` truncates before it writes: a read can fall in between.
    for _ in range(20):
        out = _cli(root, "exec", name, "--", "cat", "/tmp/c").stdout.strip()
        if out:
            return int(out)
        time.sleep(0.01)
    raise AssertionError(f"{name}: /tmp/c stays empty")


def test_restored_instance_exit_is_recorded(root_dir: Path, tmp_path: Path) -> None:
    _cli(root_dir, "run", "-d", "--name", "loop", "--", "sh", "-c", LOOP)
    time.sleep(0.3)
    _cli(root_dir, "checkpoint", "loop", str(tmp_path / "ck"))
    out = _cli(root_dir, "restore", str(tmp_path / "ck"), "--name", "back").stdout
    assert out.startswith("restored back (pid ")
    before = _counter(root_dir, "back")
    time.sleep(0.2)
    assert _counter(root_dir, "back") > before  # it runs on
    _cli(root_dir, "exec", "back", "--", "touch", "/tmp/stop")
    deadline = time.monotonic() + 20
    while _status(root_dir, "back")["status"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    st = _status(root_dir, "back")
    assert (st["status"], st["exit_status"]) == ("stopped", 7), st
