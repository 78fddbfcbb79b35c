"""Fork, enter namespaces, set up, exec: the process side of the linux_ns backend.

Process layout (the caller is a child subreaper, so the instance's processes end up
as its children and it can ``waitpid`` them for their exit status)::

    no user namespace:  caller: unshare(pid), fork PID 1, setns(pid) back;
                        PID 1 joins the cgroups itself
    user namespace:     caller ──fork──▶ launcher: join the cgroups, unshare(user), id maps,
                        unshare(pid) ──fork──▶ PID 1 (born in the cgroups); the launcher
                        exits, PID 1 is reparented to us

The process that joins is always a fresh single-threaded fork joining itself, before it
drops any privilege: the quota backend can then move just the calling thread (a cgroup v1
``tasks`` write of "0"), which skips the RCU grace period that moving a thread group by
pid waits for (~16 ms, more than the whole rest of the setup). PID 1 unshares its cgroup
namespace after the join, so its cgroup root is the instance's own group; nothing of the
instance runs before that (the command is exec'd after ``start``). ``exec`` joins the
same way, in its launcher.

Every child talks to the caller over one CLOEXEC pipe, one line per message
(``userns``, ``netns``, ``pid N``, ``ready``, ``error <one line>``), and waits on a
second pipe where the caller must act first (id maps, attaching a network).
Nothing here imports more than the standard library's cheap modules.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from stockade.interfaces import Join, JoinFn, Stdio
from stockade.spec import DEFAULT_ENV, Process, UserNamespace

from . import caps, rootfs, seccomp, syscalls, trampoline

_O_CLOEXEC = os.O_CLOEXEC
TIOCSCTTY = 0x540E
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


class SetupFailed(Exception):
    """A child reported (or died of) a setup error; the message is its one line."""


@dataclass(frozen=True)
class ProcPlan:
    """What the process that finally execs needs: who it is, what it keeps, what it runs."""

    process: Process
    cap_mask: int
    seccomp: bytes
    terminal: bool
    stdio: Stdio
    create_cwd: bool = False


@dataclass(frozen=True)
class InstancePlan:
    root: rootfs.RootPlan
    ns_flags: int  # namespaces to unshare after the user namespace
    enter: tuple[tuple[int, int], ...]  # (fd, flag): of ns_flags, spares to enter instead (nspool)
    userns: UserNamespace | None
    hostname: str
    loopback_up: bool
    attach_network: bool
    proc: ProcPlan


# --- helpers shared by both sides -------------------------------------------------------


def _send(fd: int, msg: str) -> None:
    os.write(fd, (msg.replace("\n", " ") + "\n").encode(errors="replace"))


def _messages(fd: int) -> Iterator[str]:
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode(errors="replace")


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        msg = e.strerror
        if e.filename is not None and str(e.filename) not in msg:
            msg += f": {e.filename!r}"
        return msg
    return str(e) or type(e).__name__


def _run_child(status_w: int, body: Callable[[], None]) -> NoReturn:
    """Run ``body`` in a forked child; never return into the caller's code."""
    code = 1
    try:
        # A cycle collection could close a file object of the caller's whose fd number
        # we have since closed and reused.
        gc.disable()
        body()
        code = 0
    except BaseException as e:
        with contextlib.suppress(BaseException):
            _send(status_w, "error " + one_line(e))
    finally:
        os._exit(code)


EXEC_ERRNO = "exec-errno "  # the trampoline's report when the command's own exec fails


def _error_text(msg: str, proc: Process) -> str:
    if msg.startswith(EXEC_ERRNO):
        return f"cannot run {proc.args[0]!r}: {os.strerror(int(msg[len(EXEC_ERRNO) :]))}"
    return msg[6:]


def _keep_only_fds(keep: list[int]) -> None:
    """Close every inherited fd but stdio and ``keep``: a copy of another instance's pipe
    held here would delay that instance's end-of-file until we exec."""
    lo = 3
    for fd in sorted({k for k in keep if k >= 3}):
        if fd > lo:
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, 1 << 20)


def _drain_pid(fd: int, pid: int | None) -> int | None:
    """Read to end of file, returning the pid a launcher reported (it may come after the
    error of its child): an unreaped zombie in the instance's pid namespace would keep
    its PID 1 from ever finishing to die."""
    for msg in _messages(fd):
        if msg.startswith("pid "):
            pid = int(msg[4:])
    return pid


def _wait_sync(fd: int) -> None:
    if os.read(fd, 1) != b"1":
        raise SetupFailed("aborted by the creating process")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _kill_and_reap(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _dup_stdio(stdio: Stdio) -> None:
    import fcntl

    # Move every source above 2 first, so dup2 onto 0..2 cannot clobber another source.
    srcs = [
        None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
        for fd in (stdio.stdin, stdio.stdout, stdio.stderr)
    ]
    for target, src in enumerate(srcs):
        if src is not None:
            os.dup2(src, target, inheritable=True)
            os.close(src)


def _open_pty() -> tuple[int, int]:
    """A pty from the devpts of the current mount namespace (the instance's own)."""
    import fcntl

    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | _O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    slave = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
    return master, slave


def _terminal(sock: Any) -> None:
    """Allocate a pty, send the master to the caller, make the slave our controlling tty."""
    import fcntl
    import socket

    master, slave = _open_pty()
    socket.send_fds(sock, [b"p"], [master])
    os.close(master)
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for i in range(3):
        os.dup2(slave, i, inheritable=True)
    if slave > 2:
        os.close(slave)


def resolve_command(proc: Process) -> str:
    """The executable for ``proc.args[0]``, looked up in the instance's PATH like runc."""
    name = proc.args[0]
    if "/" in name:
        path = name if name.startswith("/") else os.path.join(proc.cwd, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if not os.path.exists(path):
            raise SetupFailed(f'exec: "{name}": no such file or directory')
        raise SetupFailed(f'exec: "{name}": permission denied')
    for d in proc.env.get("PATH", DEFAULT_ENV["PATH"]).split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise SetupFailed(f'exec: "{name}": executable file not found in $PATH')


def _check_cwd(proc: Process, create: bool) -> None:
    if os.path.isdir(proc.cwd):
        return
    if create:
        try:
            os.makedirs(proc.cwd, 0o755)
            return
        except OSError as e:
            raise SetupFailed(f"process.cwd {proc.cwd!r}: {e.strerror}") from e
    raise SetupFailed(f"process.cwd {proc.cwd!r}: no such directory")


def become(plan: ProcPlan, path: str, report_fd: int, prefix: str) -> NoReturn:
    """Drop to the spec's user and restrictions and exec. Runs in the final process.

    The exec goes through :mod:`.trampoline`, never straight from this (host) binary; if
    that exec fails, ``prefix`` and the errno in decimal are written to ``report_fd``.
    """
    exe = trampoline.sealed_fd() if trampoline.available() else -1
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; the command must not
        signal.signal(sig, signal.SIG_DFL)
    p = plan.process
    os.umask(p.umask)
    caps.apply(plan.cap_mask, p.uid, p.gid, p.additional_gids)
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    os.chdir(p.cwd)
    # Every fd the caller had (and we opened) is closed by the exec; stdio stays.
    syscalls.close_range_cloexec(3)
    seccomp.load(plan.seccomp)
    if exe < 0:
        os.execve(path, list(p.args), dict(p.env))
    trampoline.execve(exe, path, list(p.args), dict(p.env), report_fd=report_fd, prefix=prefix)


def loopback_up() -> None:
    import _socket
    import fcntl

    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack_from("16sh", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def _write_id_maps(pid: int, userns: UserNamespace) -> None:
    for name, maps in (("uid_map", userns.uid_map), ("gid_map", userns.gid_map)):
        text = "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | _O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        except OSError as e:
            raise SetupFailed(f"user_namespace.{name}: {text.strip()!r}: {e.strerror}") from e
        finally:
            os.close(fd)


def _preload(terminal: bool) -> None:
    """Import what the children use before forking: each child would pay it again."""
    import _socket  # noqa: F401
    import fcntl  # noqa: F401

    if terminal:
        import socket  # noqa: F401


def _socketpair() -> tuple[Any, Any]:
    import socket

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _recv_master(sock: Any) -> int:
    import socket

    _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise SetupFailed("no terminal came back from the instance")
    return int(fds[0])


# --- create -----------------------------------------------------------------------------


def launch_instance(
    plan: InstancePlan,
    join: JoinFn,
    fifo_fd: int,
    attach: Callable[[str], None] | None,
    idle: Callable[[], None] | None = None,
) -> tuple[int, int | None]:
    """Start PID 1, set up and waiting on ``fifo_fd``. Returns (host pid, pty master).
    ``idle`` runs while PID 1 sets itself up (the caller would only wait)."""
    status_r, status_w = os.pipe2(_O_CLOEXEC)
    sync_r, sync_w = os.pipe2(_O_CLOEXEC)
    _preload(plan.proc.terminal)
    sock_p, sock_c = _socketpair() if plan.proc.terminal else (None, None)
    syscalls.set_child_subreaper()
    child_fds = [status_w, sync_r, fifo_fd, *(fd for fd, _ in plan.enter)]
    child_fds += [sock_c.fileno()] if sock_c is not None else []

    def in_child(body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            # Our ends: a child holding sync_w would never see the caller go away.
            os.close(status_r)
            os.close(sync_w)
            body()

        return run

    def pid1_body() -> None:
        _pid1(plan, status_w, sync_r, fifo_fd, sock_c, child_fds)

    launcher: int | None = None
    pid1: int | None = None
    try:
        if plan.userns is None:
            newpid = plan.ns_flags & syscalls.CLONE_NEWPID
            pid1 = _fork_joined(join, newpid, status_w, in_child(pid1_body))
        else:
            # The launcher joins, as host root (the cgroup files are not ours once in the
            # new user namespace); PID 1 is born in its groups.
            body = in_child(lambda: _launch_userns(plan, status_w, sync_r, pid1_body))
            launcher = _fork_joined(join, 0, status_w, body)
    except BaseException:
        for fd in (status_r, status_w, sync_r, sync_w):
            os.close(fd)
        for sock in (sock_p, sock_c):
            if sock is not None:
                sock.close()
        raise
    unreaped = launcher
    os.close(status_w)
    os.close(sync_r)
    if sock_c is not None:
        sock_c.close()
    ready = False
    try:
        if idle is not None:
            idle()
        for msg in _messages(status_r):
            if msg == "userns":
                assert plan.userns is not None and launcher is not None
                _write_id_maps(launcher, plan.userns)
                os.write(sync_w, b"1")
            elif msg.startswith("pid "):
                pid1 = int(msg[4:])
            elif msg == "netns":
                assert attach is not None and pid1 is not None
                attach(f"/proc/{pid1}/ns/net")
                os.write(sync_w, b"1")
            elif msg == "ready":
                ready = True
            elif msg.startswith("error "):
                # Every child exits after an error; drain to learn (and reap) every pid.
                pid1 = _drain_pid(status_r, pid1)
                if launcher is not None:
                    _reap(launcher)
                unreaped = None
                raise SetupFailed(msg[6:])
            if ready and pid1 is not None:
                break
        else:
            raise SetupFailed("the instance's first process died during setup")
        if launcher is not None:
            _reap(launcher)
        unreaped = None  # its pid may be reused from now on
        master = _recv_master(sock_p) if sock_p is not None else None
        return pid1, master
    except BaseException:
        _kill_and_reap(unreaped)
        _kill_and_reap(pid1)
        raise
    finally:
        os.close(status_r)
        os.close(sync_w)
        if sock_p is not None:
            sock_p.close()


def _fork_joined(join: JoinFn, newpid: int, status_w: int, body: Callable[[], None]) -> int:
    """Fork a child (in a new pid namespace if ``newpid``) that joins the instance's quota
    groups, then runs ``body`` and exits (an exception goes to ``status_w``).

    Where the quota backend offers a cgroup to be born in and we are single-threaded (see
    syscalls.fork_into_cgroup), the child is cloned into it; otherwise it is forked and
    moves itself in (join is then still its own first act, before it drops anything).
    """
    born = isinstance(join, Join) and join.birth_cgroup is not None and join.after_birth is not None
    if born and syscalls.single_threaded():
        assert isinstance(join, Join) and join.birth_cgroup and join.after_birth
        pid = _clone_into(join.birth_cgroup, newpid)
        if pid == 0:
            _run_child(status_w, _then(join.after_birth, body))
        if pid is not None:
            return pid
    return _fork(newpid, status_w, _then(join, body))


def _then(join: JoinFn, body: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        join(os.getpid())
        body()

    return run


def _clone_into(cgroup_dir: str, newpid: int) -> int | None:
    """0 in the child, its pid in the parent; None where the kernel refuses (no clone3,
    a cgroup that takes no processes, ...): the caller forks the ordinary way then."""
    try:
        fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except OSError:
        return None
    try:
        return syscalls.fork_into_cgroup(fd, newpid)
    except (OSError, AttributeError):  # AttributeError: an interpreter without PyOS_* exported
        return None
    finally:
        os.close(fd)


def _fork(newpid: int, status_w: int, body: Callable[[], None]) -> int:
    """Fork a child straight from the caller, in a new pid namespace if ``newpid``.

    Without a user namespace nothing has to happen between unsharing and forking, so no
    launcher process is needed: unshare(CLONE_NEWPID) changes only the namespace this
    thread's *next* children go to (other threads and the caller itself stay where they
    are), and setns back to the saved pid_for_children restores it right after the fork.
    """
    if not newpid:
        pid = os.fork()
        if pid == 0:
            _run_child(status_w, body)
        return pid
    saved = os.open("/proc/thread-self/ns/pid_for_children", os.O_RDONLY | _O_CLOEXEC)
    pid = -1
    try:
        syscalls.unshare(syscalls.CLONE_NEWPID)
        try:
            pid = os.fork()
            if pid == 0:
                _run_child(status_w, body)
        finally:
            try:
                syscalls.setns(saved, syscalls.CLONE_NEWPID, "pid namespace (back to our own)")
            except BaseException:
                # Our next child would be born inside the instance: make that impossible
                # (a pid namespace whose init is gone takes no new process) and say so.
                _kill_and_reap(pid if pid > 0 else None)
                raise
    finally:
        os.close(saved)
    return pid


def _launch_userns(plan: InstancePlan, status_w: int, sync_r: int, pid1_body: Callable[[], None]) -> None:
    """With a user namespace: enter it, wait for the caller's id maps, fork PID 1 in it.

    The fds PID 1 needs (stdio sources, FIFO, terminal socket) stay open: PID 1 sorts
    them out, and this process exits right after the fork."""
    syscalls.unshare(syscalls.CLONE_NEWUSER)
    _send(status_w, "userns")
    _wait_sync(sync_r)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    syscalls.unshare(plan.ns_flags & syscalls.CLONE_NEWPID)
    pid = os.fork()
    if pid == 0:
        _run_child(status_w, pid1_body)
    _send(status_w, f"pid {pid}")


def _pid1(  # noqa: PLR0917
    plan: InstancePlan,
    status_w: int,
    sync_r: int,
    fifo_fd: int,
    sock: Any,
    keep: list[int],
) -> None:
    # Until execve the instance's PID 1 is this runtime (host binary, full capabilities):
    # not dumpable, so nothing in the instance can open its /proc/<pid>/{mem,exe,fd}.
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    if not plan.proc.terminal:
        _dup_stdio(plan.proc.stdio)
    _keep_only_fds(keep)
    # pid and user namespaces are the forker's; cgroup comes last (below).
    entered = 0
    for fd, flag in plan.enter:
        syscalls.setns(fd, flag, "a spare namespace")
        os.close(fd)
        entered |= flag
    syscalls.unshare(plan.ns_flags & ~(syscalls.CLONE_NEWPID | syscalls.CLONE_NEWCGROUP | entered))
    if plan.loopback_up:
        loopback_up()
    os.umask(0o022)
    rootfs.setup(plan.root)
    rootfs.pivot(plan.root.root)
    syscalls.sethostname(plan.hostname)
    syscalls.keyctl_join_session_keyring(None)
    path = resolve_command(plan.proc.process)
    _check_cwd(plan.proc.process, create=True)
    if plan.ns_flags & syscalls.CLONE_NEWCGROUP:
        syscalls.unshare(syscalls.CLONE_NEWCGROUP)
    if plan.attach_network:
        _send(status_w, "netns")
        _wait_sync(sync_r)
    if sock is not None:
        _terminal(sock)
        sock.close()
    else:
        # its own session, like a terminal instance gets: CRIU dumps only trees whose
        # session leader is inside the pid namespace
        os.setsid()
    _send(status_w, "ready")
    os.read(fifo_fd, 1)
    try:
        name = plan.proc.process.args[0]
        become(plan.proc, path, 2, f"stockade: cannot start {name!r}: execve failed with errno ")
    except BaseException as e:
        # Nobody listens on the status pipe after "ready": say it where the user looks.
        try:
            os.write(2, f"stockade: cannot start {plan.proc.process.args[0]!r}: {one_line(e)}\n".encode())
        finally:
            os._exit(127)


# --- exec -------------------------------------------------------------------------------

# Entered in this order: the user namespace first (it owns the others), mnt last.
NAMESPACES = (
    ("user", syscalls.CLONE_NEWUSER),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("uts", syscalls.CLONE_NEWUTS),
    ("net", syscalls.CLONE_NEWNET),
    ("pid", syscalls.CLONE_NEWPID),
    ("cgroup", syscalls.CLONE_NEWCGROUP),
    ("mnt", syscalls.CLONE_NEWNS),
)


def open_namespaces(pid: int) -> list[tuple[str, int, int]]:
    """(name, fd, type) for each namespace of ``pid`` that differs from ours."""
    out: list[tuple[str, int, int]] = []
    try:
        for name, nstype in NAMESPACES:
            path = f"/proc/{pid}/ns/{name}"
            if os.stat(path).st_ino == os.stat(f"/proc/self/ns/{name}").st_ino:
                continue
            out.append((name, os.open(path, os.O_RDONLY | _O_CLOEXEC), nstype))
    except BaseException:
        for _, fd, _ in out:
            os.close(fd)
        raise
    return out


def launch_exec(ns: list[tuple[str, int, int]], plan: ProcPlan, join: JoinFn) -> tuple[int, int | None]:
    """Run ``plan`` inside the namespaces ``ns``; returns once it has exec'd (host pid, pty)."""
    status_r, status_w = os.pipe2(_O_CLOEXEC)
    _preload(plan.terminal)
    sock_p, sock_c = _socketpair() if plan.terminal else (None, None)
    syscalls.set_child_subreaper()

    def body() -> None:
        os.close(status_r)
        _exec_launch(ns, plan, status_w, sock_c)

    launcher = _fork_joined(join, 0, status_w, body)
    unreaped: int | None = launcher
    os.close(status_w)
    if sock_c is not None:
        sock_c.close()
    pid: int | None = None
    try:
        for msg in _messages(status_r):
            if msg.startswith("pid "):
                pid = int(msg[4:])
            elif msg.startswith(("error ", EXEC_ERRNO)):
                pid = _drain_pid(status_r, pid)
                _reap(launcher)
                unreaped = None
                raise SetupFailed(_error_text(msg, plan.process))
        # EOF: the process exec'd (the pipe is close-on-exec) or the launcher died.
        _reap(launcher)
        unreaped = None  # its pid may be reused from now on
        if pid is None:
            raise SetupFailed("the process died before it could run")
        master = _recv_master(sock_p) if sock_p is not None else None
        return pid, master
    except BaseException:
        _kill_and_reap(unreaped)
        _kill_and_reap(pid)
        raise
    finally:
        os.close(status_r)
        if sock_p is not None:
            sock_p.close()


def _exec_launch(ns: list[tuple[str, int, int]], plan: ProcPlan, status_w: int, sock: Any) -> None:
    # The runtime is about to enter the instance with full capabilities: make it
    # non-dumpable first, so the instance cannot reach its memory, exe or fds through
    # /proc (CVE-2019-5736 class). execve of the user's command resets this.
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    if not plan.terminal:
        _dup_stdio(plan.stdio)
    _keep_only_fds([status_w] + [fd for _, fd, _ in ns] + ([sock.fileno()] if sock is not None else []))
    for name, fd, nstype in ns:
        syscalls.setns(fd, nstype, f"{name} namespace")
    pid = os.fork()
    if pid == 0:
        _run_child(status_w, lambda: _exec_child(plan, status_w, sock))
    _send(status_w, f"pid {pid}")


def _exec_child(plan: ProcPlan, status_w: int, sock: Any) -> None:
    syscalls.keyctl_join_session_keyring(None)
    path = resolve_command(plan.process)
    _check_cwd(plan.process, create=False)
    if sock is not None:
        _terminal(sock)
        sock.close()
    become(plan, path, status_w, EXEC_ERRNO)
