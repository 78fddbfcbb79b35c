"""Fixtures for checkpoint/restore/migration: a second host root, a counter instance, and a
target host served by a separate process in its own network namespace over a socket."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if os.geteuid() != 0:
    pytest.skip("checkpoint tests need root", allow_module_level=True)

from stockade_linux_ns.checkpoint import criu as _criu

_why = _criu.probe_reason()
if _why:
    pytest.skip(_why, allow_module_level=True)

COUNTER = ["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.02; done"]


# The same counter holding ~32 MiB of heap (an awk string, written once: sh's command
# substitution takes ~20 s to read as much under the VM tier's emulation, awk's sprintf ~1 s):
# post-copy then still has pages to move for a while after the target resumed, and pre-copy
# has them all in its pre-dumps. It ticks on lines from one small shell, so the big process
# forks once, not every 20 ms (CRIU 3.17 fails a dump that finds a task in D state, and the
# exit of a fork of 32 MiB takes a while under emulation).
BIG_COUNTER = [
    "awk",
    'BEGIN { x = sprintf("%33554432s", ""); tick = "while :; do sleep 0.02; echo; done"; '
    'for (i = 1; (tick | getline) > 0; i++) { print i > "/tmp/c"; close("/tmp/c") } }',
]


def counter_spec(name: str = "ctr", big: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "process": {"args": BIG_COUNTER if big else COUNTER}, **extra}


def postcopy_skip_reason() -> str:
    """Empty when post-copy can run here, else why not (for pytest.skip)."""
    from stockade_linux_ns.checkpoint import CriuCheckpointer

    return CriuCheckpointer().live_problems()["postcopy"]


def precopy_skip_reason() -> str:
    """Empty when pre-copy can run here (soft-dirty tracking: the VM tier's 6.1 kernel has it,
    this host's 6.18 not), else why not (for pytest.skip)."""
    from stockade_linux_ns.checkpoint import CriuCheckpointer

    return CriuCheckpointer().live_problems()["precopy"]


def start_counter(host: Any, name: str, tmp: Path, big: bool = False) -> Any:
    """A counter instance whose stdio are plain files (pytest's capture files are O_NOFOLLOW
    temporary files, which CRIU cannot re-open on restore)."""
    return start_instance(host, name, tmp, BIG_COUNTER if big else COUNTER)


def read_counter(inst: Any) -> int:
    """The counter's value; the shell truncates /tmp/c before each write, so a read can
    find it empty for a moment: read again then."""
    deadline = time.monotonic() + 5
    while True:
        r = inst.run(["cat", "/tmp/c"])
        assert r.exit_status == 0, r
        if r.stdout.strip() or time.monotonic() > deadline:
            return int(r.stdout.strip() or 0)
        time.sleep(0.01)


def wait_counter_past(inst: Any, n: int, timeout: float = 10) -> int:
    """The counter once past ``n`` (or at the deadline); no /tmp/c yet counts as 0 (a counter
    just started may not have written it)."""
    deadline = time.monotonic() + timeout
    while True:
        r = inst.run(["cat", "/tmp/c"])
        v = int(r.stdout.strip() or 0) if r.exit_status == 0 else 0
        if v > n or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


@pytest.fixture
def second_root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stockade-test-"))
    try:
        yield d
    finally:
        from stockade import Host
        from stockade.linux import umount_tree

        h = Host(d)
        for inst in h.instances():
            try:
                inst.delete(force=True)
            except Exception as e:
                print(f"cleanup of {inst.name} failed: {e}")
        h.gc()
        umount_tree(str(d))
        shutil.rmtree(d, ignore_errors=True)


class RemoteTarget:
    """`stockade migrate-receive` in its own network namespace, on one end of a socketpair."""

    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        ours, theirs = socket.socketpair()
        self.sock = ours
        # loopback up: CRIU's kernel feature detection needs it
        cmd = [
            "unshare",
            "--net",
            "--",
            "sh",
            "-c",
            'ip link set lo up && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "stockade",
            "--root",
            str(root),
            "migrate-receive",
            "--fd",
            str(theirs.fileno()),
        ]
        self.proc = subprocess.Popen(
            cmd,
            pass_fds=[theirs.fileno()],
            env={**os.environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        theirs.close()

    def close(self) -> str:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.stderr.read() if self.proc.stderr else ""


@pytest.fixture
def remote_target(second_root: Path) -> Iterator[Any]:
    made: list[RemoteTarget] = []

    def make(env: dict[str, str] | None = None) -> RemoteTarget:
        t = RemoteTarget(second_root, env)
        made.append(t)
        return t

    try:
        yield make
    finally:
        from stockade import Host

        h = Host(second_root)
        for inst in h.instances():  # ends the receiver, which reaps the instance
            try:
                inst.delete(force=True)
            except Exception as e:
                print(f"cleanup of {inst.name} failed: {e}")
        for t in made:
            t.sock.close()
            t.close()


def start_instance(host: Any, name: str, tmp: Path, args: list[str], **extra: Any) -> Any:
    """An instance running ``args`` with plain-file stdio (see start_counter)."""
    from stockade.interfaces import Stdio

    out = os.open(tmp / f"{name}.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        inst = host.create({"name": name, "process": {"args": args}, **extra}, stdio=Stdio(nul, out, out))
    finally:
        os.close(out)
        os.close(nul)
    inst.start()
    return inst
