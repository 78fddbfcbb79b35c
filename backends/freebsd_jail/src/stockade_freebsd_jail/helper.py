"""The forked helper through which every process enters a jail.

``jail_attach`` moves the whole calling process into the jail and cannot be undone, so
the caller never attaches: a forked child does, then ``chdir("/")``, drops privileges
(setgroups, setgid, setuid), applies the umask, changes to the working directory and
executes - at once (exec) or after the start FIFO says so (the first process). Failures
before exec come back to the parent through a close-on-exec pipe, as subprocess does.

``enter`` is the only jail-specific step (``Kernel.jail_attach``); the rest is plain
POSIX, which is why Linux tests can run this module for real (with chroot as ``enter``).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable

from stockade.errors import IsolationError, StateConflict
from stockade.interfaces import JoinFn, Spawned, Stdio
from stockade.spec import Process

START = b"s"


def _report(fd: int, stage: str, e: BaseException) -> None:
    code = getattr(e, "errno", None) or errno.EIO
    with contextlib.suppress(OSError):
        os.write(fd, f"{stage}\0{code}\0{e}".encode(errors="replace")[:4096])


def _drop_privileges(process: Process) -> None:
    # On FreeBSD before 15, setgroups' first entry is also the effective gid: list it first.
    os.setgroups([process.gid, *(g for g in process.additional_gids if g != process.gid)])
    os.setgid(process.gid)
    os.setuid(process.uid)


def _child(
    enter: Callable[[], None],
    process: Process,
    stdio: Stdio,
    *,
    join: JoinFn | None,
    slave: int | None,
    start_fd: int | None,
    errw: int | None,
) -> None:
    stage = "stdio"
    try:
        if slave is not None:
            os.login_tty(slave)
        else:
            for fd, target in ((stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)):
                if fd is not None and fd != target:
                    os.dup2(fd, target)
        if join is not None:
            stage = "join"
            join(os.getpid())
        stage = "attach"
        enter()
        os.chdir("/")
        stage = "user"
        _drop_privileges(process)
        os.umask(process.umask)
        stage = "cwd"
        os.chdir(process.cwd)
        if start_fd is not None:
            stage = "wait"
            assert errw is not None
            os.close(errw)  # setup is done: the parent's create returns now
            errw = None
            if os.read(start_fd, 1) != START:
                os._exit(0)
            os.close(start_fd)
        stage = "exec"
        os.execvpe(process.args[0], list(process.args), dict(process.env))
    except BaseException as e:
        if errw is not None:
            _report(errw, stage, e)
        else:  # nobody waits on the pipe any more: say it where the instance's output goes
            with contextlib.suppress(OSError):
                os.write(2, f"stockade: {stage} {process.args[0]!r} failed: {e}\n".encode())
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
) -> Spawned:
    """Fork the helper; return once it has exec'd (or, with ``start_fd``, is waiting)."""
    errr, errw = os.pipe()
    master = slave = None
    if stdio.terminal or process.terminal:
        master, slave = os.openpty()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in exec or _exit
        os.close(errr)
        _child(enter, process, stdio, join=join, slave=slave, start_fd=start_fd, errw=errw)
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
