"""The forked helper, run for real on Linux with chroot standing in for jail_attach: the
privilege drop, umask, cwd, start FIFO and error reporting are plain POSIX."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockade.errors import IsolationError, StateConflict
from stockade.interfaces import Stdio
from stockade.spec import Process
from stockade_freebsd_jail.helper import make_start_fifo, run_in, signal_start, spawn

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (setuid, chroot)")


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stockade-test-fbsd-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _sh(script: str, **kw: object) -> Process:
    return Process(args=("/bin/sh", "-c", script), env={"PATH": "/usr/bin:/bin"}, **kw)  # type: ignore[arg-type]


def test_drops_privileges_applies_umask_and_cwd(tmp: Path) -> None:
    out = tmp / "out"
    os.chmod(tmp, 0o777)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o666)
    try:
        proc = _sh(
            "id -u; id -g; id -G; umask; pwd",
            uid=1234,
            gid=2345,
            additional_gids=(3456,),
            umask=0o027,
            cwd=str(tmp),
        )
        spawned = spawn(lambda: None, proc, Stdio(stdout=fd), what="t")
    finally:
        os.close(fd)
    assert _wait(spawned.pid) == 0
    uid, gid, groups, umask, cwd = out.read_text().split("\n")[:5]
    assert (uid, gid, sorted(groups.split()), umask, cwd) == (
        "1234",
        "2345",
        ["2345", "3456"],
        "0027",
        str(tmp),
    )


def test_enter_runs_before_exec_and_changes_root(tmp: Path) -> None:
    # chroot plays jail_attach: /bin/true of the host is not inside the new, empty root
    with pytest.raises(IsolationError, match="command not found in the instance") as info:
        spawn(lambda: os.chroot(str(tmp)), Process(args=("/bin/true",)), Stdio(), what="t")
    assert info.value.errno == 2
    spawned = spawn(lambda: None, Process(args=("/bin/true",)), Stdio(), what="t")
    assert _wait(spawned.pid) == 0


def test_enter_failure_is_reported(tmp: Path) -> None:
    def enter() -> None:
        raise OSError(22, "jail 7 no longer exists")

    with pytest.raises(IsolationError, match="attach failed: .*jail 7 no longer exists") as info:
        spawn(enter, _sh("true"), Stdio(), what="instance 'web'")
    assert info.value.errno == 22 and "instance 'web'" in str(info.value)


def test_first_process_waits_for_start(tmp: Path) -> None:
    fifo = str(tmp / "start.fifo")
    out = tmp / "out"
    fd = make_start_fifo(fifo)
    try:
        spawned = spawn(lambda: None, _sh(f"echo started > {out}"), Stdio(), what="t", start_fd=fd)
    finally:
        os.close(fd)
    assert not out.exists()  # set up, waiting
    assert os.waitpid(spawned.pid, os.WNOHANG) == (0, 0)
    signal_start(fifo, "web")
    assert _wait(spawned.pid) == 0
    assert out.read_text() == "started\n"
    with pytest.raises(StateConflict):
        signal_start(fifo, "web")


def test_run_in_reports_errors() -> None:
    run_in(lambda: None, lambda: None, what="t")
    with pytest.raises(IsolationError, match="kill failed"):
        run_in(lambda: None, lambda: (_ for _ in ()).throw(OSError(1, "kill failed")), what="t")
