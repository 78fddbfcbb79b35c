"""v1 freezer: freezer.state FROZEN / THAWED, waiting until the kernel gets there."""

from __future__ import annotations

import errno
import os
import time

from .. import fs

CONTROLLER = "freezer"


def state(path: str) -> str:
    return fs.read(os.path.join(path, "freezer.state"))


def _set(path: str, target: str, timeout: float) -> None:
    f = os.path.join(path, "freezer.state")
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        # Writing again re-kicks tasks that were mid-syscall when the first write came.
        fs.write(f, target)
        if fs.read(f) == target:
            return
        if time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, f"{f} stayed {fs.read(f)} for {timeout:g}s", f)
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def freeze(path: str, timeout: float = 10.0) -> None:
    try:
        _set(path, "FROZEN", timeout)
    except OSError:
        # Never leave a half-frozen instance behind.
        fs.write(os.path.join(path, "freezer.state"), "THAWED")
        raise


def thaw(path: str, timeout: float = 10.0) -> None:
    _set(path, "THAWED", timeout)


def is_frozen(path: str) -> bool:
    try:
        return state(path) != "THAWED"
    except FileNotFoundError:
        return False
