"""Attach the caller's terminal to a pty master from inside an instance."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import termios
import tty
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def raw_stdin() -> Iterator[None]:
    if not os.isatty(0):
        yield
        return
    old = termios.tcgetattr(0)
    try:
        tty.setraw(0)
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, old)


def _copy_winsize(master: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(1 if os.isatty(1) else 0, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)


def proxy(master: int, done: Callable[[], bool] = lambda: False) -> None:
    """Copy stdin -> master and master -> stdout until the pty closes (all its users exited)."""
    if os.isatty(0) or os.isatty(1):
        _copy_winsize(master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(master))
    fds = [master, 0]
    with raw_stdin():
        while True:
            try:
                r, _, _ = select.select(fds, [], [], 0.5)
            except InterruptedError:
                continue
            if master in r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the slave side is closed
                    break
                if not data:
                    break
                _write_all(1, data)
            if 0 in r:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:
                    fds.remove(0)
                    _write_all(master, b"\x04")  # EOF on our stdin: ^D to the program
            if not r and done():
                break


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
