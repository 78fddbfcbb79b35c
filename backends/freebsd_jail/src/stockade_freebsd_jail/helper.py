"""The forked helper through which every process enters a jail.

``jail_attach`` moves the whole calling process into the jail and cannot be undone, so
the caller never attaches: a forked child does, then ``chdir("/")``, sets the login class
(``setloginclass(2)``, so host ``loginclass:`` rctl rules and the caller's class do not
follow it in), drops privileges (setgroups, setgid, setuid - the order jexec(8) uses),
applies the umask, changes to the working directory and executes - at once (exec) or
after the start FIFO says so (the first process). Failures before exec come back to the
parent through a close-on-exec pipe, as subprocess does.

``enter`` is the only jail-specific step (``Kernel.jail_attach``) and ``setloginclass``
the only FreeBSD-only call; every call goes through an ``Ops`` object, so Linux tests run
the sequence in-process with recorders (order, and nothing after a failed attach) and
for real in a fork (with chroot as ``enter``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stockade.errors import IsolationError, StateConflict
from stockade.interfaces import JoinFn, Spawned, Stdio
from stockade.spec import Process

START = b"s"


def _report(fd: int, stage: str, e: BaseException) -> None:
    code = getattr(e, "errno", None) or errno.EIO
    with contextlib.suppress(OSError):
        os.write(fd, f"{stage}\0{code}\0{e}".encode(errors="replace")[:4096])


@dataclass(frozen=True)
class Ops:
    """The calls the helper makes once forked; tests replace them with recorders."""

    chdir: Callable[[str], None] = os.chdir
    setgroups: Callable[[list[int]], None] = os.setgroups
    setgid: Callable[[int], None] = os.setgid
    setuid: Callable[[int], None] = os.setuid
    umask: Callable[[int], Any] = os.umask
    execvpe: Callable[[str, list[str], dict[str, str]], Any] = os.execvpe
    # FreeBSD's setloginclass(2) (Kernel.setloginclass); None where there is no such call
    setloginclass: Callable[[str], None] | None = None
    login_class: str = "default"


POSIX = Ops()


def groups_for(process: Process) -> list[int]:
    """The supplementary groups: the primary gid first (before FreeBSD 15 setgroups' first
    entry is also the effective gid), then the others without repeating it."""
    return [process.gid, *(g for g in process.additional_gids if g != process.gid)]


def enter_and_prepare(enter: Callable[[], None], process: Process, ops: Ops, stage: list[str]) -> None:
    """attach -> chdir("/") -> login class -> setgroups -> setgid -> setuid -> umask -> cwd.

    ``stage[0]`` names the step under way, for the error report. Privileges are dropped
    only after the process is inside the jail, and in the order that makes each call
    still permitted (groups and gid while still root, uid last)."""
    stage[0] = "attach"
    enter()
    ops.chdir("/")
    if ops.setloginclass is not None:
        stage[0] = "login class"
        ops.setloginclass(ops.login_class)
    stage[0] = "user"
    ops.setgroups(groups_for(process))
    ops.setgid(process.gid)
    ops.setuid(process.uid)
    ops.umask(process.umask)
    stage[0] = "cwd"
    ops.chdir(process.cwd)


def exec_process(process: Process, ops: Ops, stage: list[str]) -> None:
    stage[0] = "exec"
    ops.execvpe(process.args[0], list(process.args), dict(process.env))


def _child(
    enter: Callable[[], None],
    process: Process,
    stdio: Stdio,
    *,
    join: JoinFn | None,
    slave: int | None,
    start_fd: int | None,
    errw: int | None,
    ops: Ops,
) -> None:
    stage = ["stdio"]
    try:
        if slave is not None:
            os.login_tty(slave)
        else:
            for fd, target in ((stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)):
                if fd is not None and fd != target:
                    os.dup2(fd, target)
        if join is not None:
            stage[0] = "join"
            join(os.getpid())
        enter_and_prepare(enter, process, ops, stage)
        if start_fd is not None:
            stage[0] = "wait"
            assert errw is not None
            os.close(errw)  # setup is done: the parent's create returns now
            errw = None
            if os.read(start_fd, 1) != START:
                os._exit(0)
            os.close(start_fd)
        exec_process(process, ops, stage)
    except BaseException as e:
        if errw is not None:
            _report(errw, stage[0], e)
        else:  # nobody waits on the pipe any more: say it where the instance's output goes
            with contextlib.suppress(OSError):
                os.write(2, f"stockade: {stage[0]} {process.args[0]!r} failed: {e}\n".encode())
    finally:
        os._exit(127)


def _failure(text: str, what: str) -> IsolationError:
    stage, _, rest = text.partition("\0")
    code, _, message = rest.partition("\0")
    num = int(code) if code.isdigit() else errno.EIO
    if stage == "exec" and num == errno.ENOENT:
        return IsolationError(f"{what}: command not found in the instance ({message})", errno=num)
    return IsolationError(f"{what}: {stage} failed: {message}", errno=num)


def spawn(
    enter: Callable[[], None],
    process: Process,
    stdio: Stdio,
    *,
    what: str,
    join: JoinFn | None = None,
    start_fd: int | None = None,
    ops: Ops = POSIX,
) -> Spawned:
    """Fork the helper; return once it has exec'd (or, with ``start_fd``, is waiting)."""
    errr, errw = os.pipe()
    master = slave = None
    if stdio.terminal or process.terminal:
        master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in exec or _exit
        os.close(errr)
        _child(enter, process, stdio, join=join, slave=slave, start_fd=start_fd, errw=errw, ops=ops)
    os.close(errw)
    if slave is not None:
        os.close(slave)
    chunks = []
    while chunk := os.read(errr, 4096):
        chunks.append(chunk)
    os.close(errr)
    if chunks:
        os.waitpid(pid, 0)
        if master is not None:
            os.close(master)
        raise _failure(b"".join(chunks).decode(errors="replace"), what)
    return Spawned(pid, master)


def run_in(enter: Callable[[], None], fn: Callable[[], None], *, what: str) -> None:
    """Run ``fn`` in a forked child after ``enter`` (e.g. signal every process of a jail)."""
    errr, errw = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in _exit
        os.close(errr)
        try:
            enter()
            fn()
        except BaseException as e:
            _report(errw, "run", e)
            os._exit(1)
        os._exit(0)
    os.close(errw)
    text = os.read(errr, 4096)
    os.close(errr)
    os.waitpid(pid, 0)
    if text:
        raise _failure(text.decode(errors="replace"), what)


def make_start_fifo(path: str) -> int:
    """The FIFO the first process waits on, opened read-write so the wait outlives callers."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR)


def signal_start(path: str, instance: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):
            raise StateConflict(
                f"instance {instance!r} cannot start: its first process is gone "
                "or already started; delete and create it again"
            ) from e
        raise IsolationError(f"cannot start instance {instance!r}: {e}", errno=e.errno) from e
    try:
        os.write(fd, START)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
