"""One supervisor per host root for every detached instance.

Only a parent can learn a process's exit status, so the instances that outlive the
command that made them (``create``, ``run -d``) are children of this one process: it
is a child subreaper, creates and (re)starts them on request over a unix socket, reaps
them and records each exit status. It starts on demand and exits once it has had no
instance and no request for a while, so an idle host has no stockade process at all.

Protocol: one JSON object per line each way. Requests: ``{"op": "create", "spec":
{...}, "start": bool}``, ``{"op": "start", "name": ...}``, ``{"op": "ping"}``. Replies:
``{"ok": true, ...}`` or ``{"ok": false, "error": {"type", "message", "errno"}}``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import errors as _errors
from .errors import StockadeError
from .host import Host, Instance, shell_status
from .interfaces import Stdio

IDLE_EXIT_S = 3.0
PR_SET_CHILD_SUBREAPER = 36


def socket_path(host: Host) -> Path:
    return host.run_dir / "supervisor.sock"


# --- client -----------------------------------------------------------------------------------


def request(host: Host, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one request to the host's supervisor (starting it if needed); raise its error."""
    sock = _connect(host)
    with sock, sock.makefile("rwb") as f:
        f.write(json.dumps(msg).encode() + b"\n")
        f.flush()
        line = f.readline()
    if not line:
        raise StockadeError(
            f"the stockade supervisor closed the connection; see {host.run_dir / 'supervisor.log'}"
        )
    reply: dict[str, Any] = json.loads(line)
    if not reply.get("ok"):
        err = reply.get("error", {})
        cls = getattr(_errors, str(err.get("type")), StockadeError)
        if not (isinstance(cls, type) and issubclass(cls, StockadeError)):
            cls = StockadeError
        e: StockadeError = cls.__new__(cls)
        StockadeError.__init__(e, str(err.get("message", "supervisor error")), errno=err.get("errno"))
        raise e
    return reply


def _connect(host: Host) -> socket.socket:
    path = socket_path(host)
    s = _try_connect(path)
    if s:
        return s
    host.run_dir.mkdir(parents=True, exist_ok=True)
    lock = os.open(host.run_dir / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = _try_connect(path)
        if s:
            return s
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log = os.open(
            host.run_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            subprocess.Popen(
                [sys.executable, "-m", "stockade.supervisor", str(host.root), str(host.run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = _try_connect(path)
            if s:
                return s
            time.sleep(0.005)
        raise StockadeError(f"the stockade supervisor did not start; see {host.run_dir / 'supervisor.log'}")
    finally:
        os.close(lock)


def _try_connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(str(path))
        return s
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None


# --- server -----------------------------------------------------------------------------------


class Supervisor:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.children: dict[int, str] = {}  # pid of an instance's first process -> name
        self.last_activity = time.monotonic()

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
        srv.listen(64)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sel = selectors.DefaultSelector()
        sel.register(srv, selectors.EVENT_READ, "accept")
        sel.register(rfd, selectors.EVENT_READ, "signal")
        try:
            while True:
                self._reap()
                idle = not self.children and time.monotonic() - self.last_activity > IDLE_EXIT_S
                if idle:
                    break
                for key, _ in sel.select(timeout=1.0):
                    if key.data == "signal":
                        with contextlib.suppress(BlockingIOError):
                            os.read(rfd, 4096)
                    else:
                        conn, _ = srv.accept()
                        with conn:
                            self._handle(conn)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            srv.close()

    def _reap(self) -> None:
        while True:
            try:
                pid, ws = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            name = self.children.pop(pid, None)
            if name is not None:
                self.last_activity = time.monotonic()
                self._record(name, pid, shell_status(ws))

    def _record(self, name: str, pid: int, status: int) -> None:
        with contextlib.suppress(StockadeError), self.host.store.lock(name):
            st = self.host.store.load(name)
            if st.pid == pid and st.status in ("created", "running", "paused"):
                Instance(self.host, st)._record_exit(status)

    def _handle(self, conn: socket.socket) -> None:
        self.last_activity = time.monotonic()
        conn.settimeout(30)
        with conn.makefile("rwb") as f:
            line = f.readline()
            try:
                reply = self._dispatch(json.loads(line))
            except StockadeError as e:
                reply = {
                    "ok": False,
                    "error": {"type": type(e).__name__, "message": str(e), "errno": e.errno},
                }
            except Exception as e:
                reply = {
                    "ok": False,
                    "error": {"type": "StockadeError", "message": f"supervisor: {e}", "errno": errno.EIO},
                }
            with contextlib.suppress(OSError):
                f.write(json.dumps(reply).encode() + b"\n")
                f.flush()

    def _stdio(self, name: str) -> Stdio:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        path = self.host.store.log_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return Stdio(stdin=null, stdout=log, stderr=log)

    def _dispatch(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "create":
            spec = self.host.make_spec(msg["spec"])
            # the log file lives in the instance dir, which create() makes: open it after
            inst = self._with_log(
                spec.name, lambda stdio: self.host.create(spec, stdio=stdio, owner="supervisor")
            )
            self._adopt(inst)
            if msg.get("start"):
                inst.start()
            return {"ok": True, "name": inst.name, "pid": inst.pid}
        if op == "start":
            inst = self.host.get(str(msg["name"]))
            if inst.status == "stopped":
                self._with_log(inst.name, lambda stdio: inst.start(stdio=stdio))
            else:
                inst.start()
            self._adopt(inst)
            return {"ok": True, "name": inst.name, "pid": inst.pid}
        raise StockadeError(f"unknown supervisor request {op!r}")

    def _with_log(self, name: str, fn: Any) -> Any:
        stdio = self._stdio(name)
        try:
            return fn(stdio)
        except BaseException:
            log = self.host.store.log_path(name)
            # a log of a name that failed to become an instance is ours to remove; one of an
            # existing instance is not
            if not self.host.store.exists(name) and log.exists() and log.stat().st_size == 0:
                log.unlink()
            raise
        finally:
            for fd in (stdio.stdin, stdio.stdout):
                if fd is not None:
                    os.close(fd)

    def _adopt(self, inst: Instance) -> None:
        if inst.pid:
            self.children[inst.pid] = inst.name
            st = inst.state
            if not st.owner.startswith("supervisor:") or st.owner != f"supervisor:{os.getpid()}":
                with self.host.store.lock(inst.name):
                    cur = self.host.store.load(inst.name)
                    cur.owner = f"supervisor:{os.getpid()}"
                    self.host.store.save(cur)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root, run_dir = args[0], args[1]
    os.chdir("/")
    Supervisor(Host(root, run_dir=run_dir)).serve()


if __name__ == "__main__":
    main()
