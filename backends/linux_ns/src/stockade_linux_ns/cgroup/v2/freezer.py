"""v2 freezer: cgroup.freeze (a core file, 5.2+), done when cgroup.events says "frozen 1"."""

from __future__ import annotations

import errno
import os
import time

from .. import fs
from . import core

CONTROLLER = "freezer"


def _set(path: str, value: int, timeout: float) -> None:
    fs.write(os.path.join(path, "cgroup.freeze"), value)
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while core.events(path).get("frozen", 0) != value:
        if time.monotonic() > deadline:
            raise OSError(
                errno.ETIMEDOUT,
                f"{path}/cgroup.events: frozen is not {value} after {timeout:g}s",
                path,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def freeze(path: str, timeout: float = 10.0) -> None:
    try:
        _set(path, 1, timeout)
    except OSError:
        fs.write(os.path.join(path, "cgroup.freeze"), 0)
        raise


def thaw(path: str, timeout: float = 10.0) -> None:
    _set(path, 0, timeout)


def is_frozen(path: str) -> bool:
    try:
        return fs.read(os.path.join(path, "cgroup.freeze")) == "1"
    except FileNotFoundError:
        return False
