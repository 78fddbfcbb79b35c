"""The client half of a command the supervisor runs: send argv, cwd and stdio; attend.

The supervisor (cli/served.py) parses the command line with the full parser and answers
either with a finished command (exit code and output, as for ``create`` or a usage error)
or with a started instance that this process then stays attached to: it forwards signals
to it, proxies a terminal, and exits with its exit status.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # no stubs; see FORWARDED_SIGNALS
import os
import sys

from ..errors import StockadeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..supervisor_client import Connection

# _signal, not signal: signal.py wraps everything in enums (enum: ~2 ms of start-up).
FORWARDED_SIGNALS = (
    _signal.SIGINT,
    _signal.SIGTERM,
    _signal.SIGHUP,
    _signal.SIGQUIT,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
)


def forward(root: str, argv: list[str]) -> int:
    from ..paths import root_of, run_dir_of
    from ..supervisor_client import exchange

    root = root_of(root or os.environ.get("STOCKADE_ROOT") or None)  # as --root's default
    run_dir = run_dir_of(root)
    relay = SignalRelay(root, run_dir)
    stdio, opened = _stdio()
    try:
        conn, reply, got = exchange(root, run_dir, {"op": "cli", "argv": argv, "cwd": os.getcwd()}, stdio)
    except StockadeError as e:
        print(f"stockade: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        for fd in opened:
            os.close(fd)
    if "exit" in reply:  # a finished command
        conn.close()
        for fd in got:
            os.close(fd)
        _write(1, reply.get("stdout", ""))
        _write(2, reply.get("stderr", ""))
        return int(reply["exit"])
    try:
        return attend(conn, reply, got, relay)
    except StockadeError as e:
        print(f"stockade: error: {e}", file=sys.stderr)
        return e.exit_code


class SignalRelay:
    """Passes the signals a user sends this process (^C, kill) on to the instance.

    Installed before the request goes out: the instance may run (and the user signal it)
    before its name comes back; what arrives until then is held and sent once it does."""

    def __init__(self, root: str, run_dir: str) -> None:
        self.root, self.run_dir = root, run_dir
        self.name: str | None = None
        self.pending: list[int] = []
        for s in FORWARDED_SIGNALS:
            _signal.signal(s, self._received)

    def aim(self, name: str) -> None:
        self.name = name
        held, self.pending = self.pending, []
        for signum in held:
            self._send(signum)

    def _received(self, signum: int, _frame: object) -> None:
        if self.name is None:
            self.pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        from ..supervisor_client import request

        try:  # noqa: SIM105 (no contextlib on this path)
            request(self.root, self.run_dir, {"op": "kill", "name": self.name, "signal": signum})
        except StockadeError:
            pass  # it has just exited


def attend(conn: Connection, reply: dict[str, Any], got: list[int], relay: SignalRelay) -> int:
    """Stay with a started instance until it exits: relay signals to it, proxy its
    terminal (``got``: the pty master, if any); return its exit status."""
    try:
        relay.aim(reply["name"])
        if got:
            from .tty import proxy

            proxy(got[0])
            os.close(got[0])
        while True:
            try:
                event, _ = conn.receive()
                break
            except InterruptedError:
                continue
        if event is None:
            raise StockadeError("the stockade supervisor went away before the instance exited")
        return int(event["exit_status"])
    finally:
        conn.close()


def _stdio() -> tuple[tuple[int, int, int], list[int]]:
    """Our fds 0-2 for the instance; a closed one (``<&-``) becomes /dev/null."""
    fds = []
    opened = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            opened.append(null)
            fds.append(null)
    return (fds[0], fds[1], fds[2]), opened


def _write(fd: int, text: str) -> None:
    data = text.encode()
    while data:
        try:
            data = data[os.write(fd, data) :]
        except BrokenPipeError:
            return
