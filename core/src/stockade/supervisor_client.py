"""Talking to a host root's supervisor (see supervisor.py), starting it when needed.

Stdlib only, and no import of the Host: this is the whole of what the CLI's hot path
(``stockade run``) loads besides argparse. A request is one JSON line, optionally with
file descriptors (SCM_RIGHTS); a reply is one JSON line, optionally with descriptors.
"""

from __future__ import annotations

import _socket
import errno
import os
import sys

from . import errors as _errors
from . import wire
from .errors import StockadeError
from .paths import supervisor_socket

TYPE_CHECKING = False  # typing costs milliseconds on the run path; annotations are strings
if TYPE_CHECKING:
    from typing import Any

MAX_FDS = 4
_FD_SIZE = 4  # sizeof(int) in an SCM_RIGHTS message
_RESET_RETRIES = 3
# _socket, not socket: socket.py pulls in selectors, array and enum conversions (~4 ms on
# the run path) for what is here one sendmsg and one recvmsg.


class Connection:
    """One request/reply exchange (and, for ``run``, the events after it)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
        data = wire.dumps(msg).encode() + b"\n"
        if fds:
            rights = b"".join(fd.to_bytes(_FD_SIZE, sys.byteorder) for fd in fds)
            sent = self.sock.sendmsg([data], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def receive(self) -> tuple[dict[str, Any] | None, list[int]]:
        """The next JSON line (None at EOF) and any descriptors that came with it."""
        fds: list[int] = []
        while b"\n" not in self._buf:
            data, ancdata, _, _ = self.sock.recvmsg(
                65536, _socket.CMSG_SPACE(MAX_FDS * _FD_SIZE), _socket.MSG_CMSG_CLOEXEC
            )
            for level, kind, payload in ancdata:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % _FD_SIZE
                    fds.extend(
                        int.from_bytes(payload[i : i + _FD_SIZE], sys.byteorder)
                        for i in range(0, usable, _FD_SIZE)
                    )
            if not data:
                return None, fds
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return wire.loads(line), fds


def raise_reply_error(reply: dict[str, Any]) -> None:
    """Re-raise an error the supervisor sent, as the same StockadeError class."""
    err = reply.get("error", {})
    cls = getattr(_errors, str(err.get("type")), StockadeError)
    if not (isinstance(cls, type) and issubclass(cls, StockadeError)):
        cls = StockadeError
    e: StockadeError = cls.__new__(cls)
    StockadeError.__init__(e, str(err.get("message", "supervisor error")), errno=err.get("errno"))
    raise e


def exchange(
    root: str, run_dir: str, msg: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> tuple[Connection, dict[str, Any], list[int]]:
    """Connect, send ``msg`` and return the open connection with the reply and its fds.

    A supervisor that idles out closes its listening socket with connections still in the
    backlog; the kernel resets those (ECONNRESET/EPIPE) before anything was read, so the
    request provably never ran and is sent again, to the supervisor that takes its place.
    An error reply is raised; EOF without a reply is an error (the request may have run).
    """
    for attempt in range(_RESET_RETRIES + 1):
        conn = connect(root, run_dir)
        try:
            conn.send(msg, fds)
            reply, got = conn.receive()
        except (ConnectionResetError, BrokenPipeError):
            conn.close()
            if attempt == _RESET_RETRIES:
                raise StockadeError(
                    f"the stockade supervisor keeps resetting connections; see {_log(run_dir)}"
                ) from None
            continue
        except BaseException:
            conn.close()
            raise
        if reply is None or not reply.get("ok"):
            conn.close()
            for fd in got:
                os.close(fd)
            if reply is None:
                raise StockadeError(f"the stockade supervisor closed the connection; see {_log(run_dir)}")
            raise_reply_error(reply)
        return conn, reply, got
    raise AssertionError("unreachable")


def request(root: str, run_dir: str, msg: dict[str, Any]) -> dict[str, Any]:
    """Send one request and return its reply; raise the error it carries."""
    conn, reply, fds = exchange(root, run_dir, msg)
    conn.close()
    for fd in fds:
        os.close(fd)
    return reply


def _log(run_dir: str) -> str:
    return os.path.join(run_dir, "supervisor.log")


def connect(root: str, run_dir: str) -> Connection:
    path = supervisor_socket(run_dir)
    s = _try_connect(path)
    if s:
        return Connection(s)
    os.makedirs(run_dir, exist_ok=True)
    # Only when no supervisor answers: subprocess alone (threading included) is ~5 ms.
    import fcntl
    import subprocess
    import time

    lock = os.open(os.path.join(run_dir, "supervisor.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        s = _try_connect(path)
        if s:
            return Connection(s)
        try:  # noqa: SIM105 (no contextlib on the run path)
            os.unlink(path)
        except FileNotFoundError:
            pass
        log = os.open(
            os.path.join(run_dir, "supervisor.log"),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            subprocess.Popen(
                [sys.executable, "-m", "stockade.supervisor", root, run_dir],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(log)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            s = _try_connect(path)
            if s:
                return Connection(s)
            time.sleep(0.005)
        raise StockadeError(
            f"the stockade supervisor did not start; see {os.path.join(run_dir, 'supervisor.log')}"
        )
    finally:
        os.close(lock)


def _try_connect(path: str) -> _socket.socket | None:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.connect(path)
        return s
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        return None
    except OSError as e:
        s.close()
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            return None
        raise


def shutdown(run_dir: str, timeout: float = 15.0) -> None:
    """Ask a running supervisor to exit once it has no instance left (used by tests).
    If it has none, wait (up to ``timeout`` s) until it is gone: it releases what it kept
    for the root's next instance (empty cgroup parents, spare namespaces) as it exits."""
    s = _try_connect(supervisor_socket(run_dir))
    if s is None:
        return
    with Connection(s) as conn:
        try:
            conn.send({"op": "shutdown"})
            reply, _ = conn.receive()
        except (ConnectionResetError, BrokenPipeError):
            return  # it was idling out already: the same outcome
    if reply and reply.get("exiting") and reply.get("pid"):
        from .state import wait_exit  # not on the run path: the thin client never shuts down

        wait_exit(int(reply["pid"]), timeout)
