"""v2 io: io.max ("MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..") and io.stat."""

from __future__ import annotations

import os

from stockade.spec import IOLimits

from .. import fs

CONTROLLER = "io"

_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}


def io_max_line(io: IOLimits, device: str) -> str | None:
    """Only the keys given; the kernel keeps the others. 0 means no limit ("max")."""
    parts = [
        f"{key}={getattr(io, field) or fs.MAX}"
        for field, key in _KEYS.items()
        if getattr(io, field) is not None
    ]
    return f"{device} {' '.join(parts)}" if parts else None


def apply(path: str, io: IOLimits, device: str) -> None:
    line = io_max_line(io, device)
    if line is not None:
        fs.write(os.path.join(path, "io.max"), line)


def stats(path: str) -> dict[str, int | None]:
    try:
        text = fs.read(os.path.join(path, "io.stat"))
    except FileNotFoundError:
        return {"io_read_bytes": None, "io_write_bytes": None}
    read = write = 0
    for line in text.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return {"io_read_bytes": read, "io_write_bytes": write}
