"""One supervisor per host root: the parent of every instance the CLI starts.

Only a parent learns a process's exit status, so the instances that outlive the
command that asked for them (``create``, ``run -d``) are children of this one process:
a child subreaper that creates and (re)starts them on request, reaps them and records
each exit status. ``run`` uses it too: the command hands over its standard streams
(SCM_RIGHTS) and waits on the connection for the exit status, so a warm process does
the work and the command itself imports almost nothing (DESIGN.md, Performance).

It starts on demand and exits once it has had no instance and no request for a while
(``STOCKADE_SUPERVISOR_IDLE`` seconds, default 5), so an idle host has no stockade process.

Protocol (supervisor_client.py): one JSON object per line each way. Requests:
``create {spec, start}``, ``start {name}``, ``run {spec, terminal, rm}`` + stdio fds,
``kill {name, signal}``, ``ping``, ``shutdown``. Replies: ``{"ok": true, ...}`` or
``{"ok": false, "error": {"type", "message", "errno"}}``; ``run`` later sends
``{"event": "exited", "exit_status": N}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StockadeError
from .host import Host, Instance, shell_status
from .interfaces import Stdio
from .paths import supervisor_socket
from .supervisor_client import Connection

PR_SET_CHILD_SUBREAPER = 36


def socket_path(host: Host) -> Path:
    return Path(supervisor_socket(str(host.run_dir)))


def request(host: Host, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the host's supervisor (starting it if needed); raise its error."""
    from .supervisor_client import request as _request

    return _request(str(host.root), str(host.run_dir), msg)


@dataclass
class Waiter:
    """A ``run`` command waiting for its instance's exit status."""

    name: str
    conn: Connection | None
    remove: bool


class Supervisor:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.children: dict[int, str] = {}  # pid of an instance's first process -> name
        self.waiters: dict[int, Waiter] = {}
        self.last_activity = time.monotonic()
        self.idle_s = float(os.environ.get("STOCKADE_SUPERVISOR_IDLE", "5"))
        self.sel = selectors.DefaultSelector()

    def serve(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        path = socket_path(self.host)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            srv.bind(str(path))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return  # another supervisor won the race
            raise
        # Whoever can connect runs instances as root: the owner alone, whatever the umask
        # (and each peer's credentials are checked again on accept).
        os.chmod(path, 0o600)
        srv.listen(128)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.sel.register(srv, selectors.EVENT_READ, ("accept", None))
        self.sel.register(rfd, selectors.EVENT_READ, ("signal", None))
        try:
            while True:
                self._reap()
                if not self.children and time.monotonic() - self.last_activity > self.idle_s:
                    break
                for key, _ in self.sel.select(timeout=min(1.0, max(self.idle_s, 0.05))):
                    what, obj = key.data
                    if what == "signal":
                        with contextlib.suppress(BlockingIOError):
                            os.read(rfd, 4096)
                    elif what == "accept":
                        conn, _ = srv.accept()
                        if not _peer_is_us(conn):
                            conn.close()
                            continue
                        try:
                            self._handle(Connection(conn))
                        except Exception:  # a bug in one request must not end the others
                            traceback.print_exc()
                    else:  # a waiting `run` whose command went away: the instance carries on
                        self._drop_waiter_conn(obj)
        finally:
            try:
                self.host.close()
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                srv.close()

    # --- children ---------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, ws = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = self.children.pop(pid, None)
            if name is None:
                continue
            self.last_activity = time.monotonic()
            status = shell_status(ws)
            waiter = self.waiters.pop(pid, None)
            if waiter is not None and waiter.remove:
                self._remove(waiter, pid, status)
                continue
            self._record(name, pid, status)
            if waiter is not None:
                self._tell(waiter, status)

    def _record(self, name: str, pid: int, status: int) -> None:
        with contextlib.suppress(StockadeError), self.host.store.lock(name):
            st = self.host.store.load(name)
            if st.pid == pid and st.status in ("created", "running", "paused"):
                Instance(self.host, st)._record_exit(status)

    def _tell(self, waiter: Waiter, status: int) -> None:
        if waiter.conn is not None:
            self.sel.unregister(waiter.conn.sock)
            with contextlib.suppress(OSError):
                waiter.conn.send({"event": "exited", "exit_status": status})
            waiter.conn.close()
            waiter.conn = None

    def _remove(self, waiter: Waiter, pid: int, status: int) -> None:
        """``run --rm``: the exit status goes out as soon as the state says "deleting" (the
        teardown, ~5 ms, then overlaps the client's own exit); anyone who looks at the
        instance from then on waits for the lock held until it is gone (Host.get)."""
        try:
            with contextlib.suppress(StockadeError):
                self.host.delete_exited(waiter.name, pid, status, marked=lambda: self._tell(waiter, status))
        finally:
            self._tell(waiter, status)  # if the teardown failed before it could

    def _drop_waiter_conn(self, pid: int) -> None:
        w = self.waiters.get(pid)
        if w is not None and w.conn is not None:
            self.sel.unregister(w.conn.sock)
            w.conn.close()
            w.conn = None

    def _adopt(self, inst: Instance) -> None:
        if inst.pid:
            self.children[inst.pid] = inst.name

    # --- requests ---------------------------------------------------------------------------

    def _handle(self, conn: Connection) -> None:
        self.last_activity = time.monotonic()
        conn.sock.settimeout(30)
        fds: list[int] = []
        keep = False
        try:
            msg, fds = conn.receive()
            if msg is None:
                return
            owned, fds = fds, []  # _dispatch owns them from the call on, raise or not
            reply, send_fds, keep_pid = self._dispatch(msg, owned)
            conn.send(reply, send_fds)
            for fd in send_fds:
                os.close(fd)
            if keep_pid is not None:
                w = self.waiters[keep_pid]
                w.conn = conn
                conn.sock.setblocking(False)
                self.sel.register(conn.sock, selectors.EVENT_READ, ("waiter", keep_pid))
                keep = True
        except StockadeError as e:
            self._reply_error(conn, type(e).__name__, str(e), e.errno)
        except Exception as e:
            self._reply_error(conn, "StockadeError", f"supervisor: {type(e).__name__}: {e}", errno.EIO)
        finally:
            for fd in fds:
                os.close(fd)
            if not keep:
                conn.close()

    @staticmethod
    def _reply_error(conn: Connection, kind: str, message: str, err: int) -> None:
        with contextlib.suppress(OSError):
            conn.send({"ok": False, "error": {"type": kind, "message": message, "errno": err}})

    def _dispatch(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int], int | None]:
        """-> (reply, fds to send with it, pid whose exit the connection waits for)."""
        op = msg.get("op")
        if op == "run":
            return self._run(msg, fds)
        if op == "cli":
            from .cli.served import serve

            return serve(self, msg, fds)
        for fd in fds:  # only `run` takes descriptors
            os.close(fd)
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}, [], None
        if op == "shutdown":
            self.idle_s = 0.0
            return {"ok": True, "pid": os.getpid(), "exiting": not self.children}, [], None
        if op == "kill":
            self.host.get(str(msg["name"])).kill(int(msg.get("signal", signal.SIGTERM)))
            return {"ok": True}, [], None
        if op == "create":
            spec = self.host.make_spec(msg["spec"])
            start = bool(msg.get("start"))
            inst = self._with_log(
                spec.name, lambda stdio: self.host.create(spec, stdio=stdio, owner="supervisor", start=start)
            )
            self._adopt(inst)
            return {"ok": True, "name": inst.name, "pid": inst.pid}, [], None
        if op == "restore":
            # Here, not in the CLI: the restored tree is the restorer's child (CRIU's
            # rst_sibling), and only a process that outlives the command can reap it and
            # record its exit status, as for any detached instance.
            from .checkpointing import restore

            inst = restore(self.host, str(msg["dir"]), name=msg.get("name"))
            self._adopt(inst)
            return {"ok": True, "name": inst.name, "pid": inst.pid}, [], None
        if op == "start":
            inst = self.host.get(str(msg["name"]))
            if inst.status == "stopped":
                self._with_log(inst.name, lambda stdio: inst.start(stdio=stdio))
            else:
                inst.start()
            self._adopt(inst)
            return {"ok": True, "name": inst.name, "pid": inst.pid}, [], None
        raise StockadeError(f"unknown supervisor request {op!r}")

    def _run(self, msg: dict[str, Any], fds: list[int]) -> tuple[dict[str, Any], list[int], int | None]:
        try:
            terminal = bool(msg.get("terminal"))
            spec = self.host.make_spec(msg["spec"])
            if terminal:
                stdio = Stdio(terminal=True)
            else:
                stdin, stdout, stderr = [*fds, None, None, None][:3]
                stdio = Stdio(stdin=stdin, stdout=stdout, stderr=stderr)
            rm = bool(msg.get("rm"))
            inst = self.host.create(spec, stdio=stdio, owner="supervisor", ephemeral=rm, start=True)
        finally:
            for fd in fds:
                os.close(fd)
        # Not reaped before the next turn of the serve loop: the waiter is in place by then.
        self._adopt(inst)
        self.waiters[inst.pid or 0] = Waiter(inst.name, None, rm)
        master = [inst.pty_master] if inst.pty_master is not None else []
        return {"ok": True, "name": inst.name, "pid": inst.pid}, master, inst.pid

    def _stdio(self, name: str) -> Stdio:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        path = self.host.store.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return Stdio(stdin=null, stdout=log, stderr=log)

    def _with_log(self, name: str, fn: Callable[[Stdio], Any]) -> Any:
        stdio = self._stdio(name)
        try:
            return fn(stdio)
        except BaseException:
            log = self.host.store.log_path(name)
            # the log of a name that failed to become an instance is ours to remove; one of
            # an existing instance is not
            if not self.host.store.exists(name) and log.exists() and log.stat().st_size == 0:
                log.unlink()
            raise
        finally:
            for fd in (stdio.stdin, stdio.stdout):
                if fd is not None:
                    os.close(fd)


def _peer_is_us(conn: socket.socket) -> bool:
    """The connecting process runs as our own user (SO_PEERCRED: pid, uid, gid)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == os.geteuid())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root, run_dir = args[0], args[1]
    os.chdir("/")
    Supervisor(Host(root, run_dir=run_dir, warm=True)).serve()


if __name__ == "__main__":
    main()
