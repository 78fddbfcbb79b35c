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
    stdio, opened = _stdio()
    try:
        conn, reply, got = exchange(root, run_dir, {"op": "cli", "argv": argv, "cwd": os.getcwd()}, stdio)
    except StockadeError as e:
        print(f"stockade: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
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
        return attend(conn, reply, got, root, run_dir)
    except StockadeError as e:
        print(f"stockade: error: {e}", file=sys.stderr)
        return e.exit_code


def attend(conn: Connection, reply: dict[str, Any], got: list[int], root: str, run_dir: str) -> int:
    """Stay with a started instance until it exits: forward signals to it, proxy its
    terminal (``got``: the pty master, if any); return its exit status."""
    from ..supervisor_client import request

    name = reply["name"]

    def relay(signum: int, _frame: object) -> None:
        try:  # noqa: SIM105 (no contextlib on this path)
            request(root, run_dir, {"op": "kill", "name": name, "signal": signum})
        except StockadeError:
            pass  # it has just exited

    try:
        for s in FORWARDED_SIGNALS:
            _signal.signal(s, relay)
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
