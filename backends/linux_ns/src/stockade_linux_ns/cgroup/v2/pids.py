"""v2 pids: pids.max and pids.current."""

from __future__ import annotations

import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "pids"


def apply(path: str, res: Resources) -> None:
    if res.pids is not None:
        fs.write(os.path.join(path, "pids.max"), res.pids)


def stats(path: str) -> dict[str, int | None]:
    return {
        "pids_current": fs.read_int(os.path.join(path, "pids.current")),
        "pids_limit": fs.read_int(os.path.join(path, "pids.max")),
    }
