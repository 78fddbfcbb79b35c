"""v1 blkio: throttling per block device (blkio.throttle.*_device, "MAJ:MIN value")."""

from __future__ import annotations

import os

from stockade.spec import IOLimits

from .. import fs

CONTROLLER = "blkio"

_FILES = {
    "read_bps": "blkio.throttle.read_bps_device",
    "write_bps": "blkio.throttle.write_bps_device",
    "read_iops": "blkio.throttle.read_iops_device",
    "write_iops": "blkio.throttle.write_iops_device",
}


def apply(path: str, io: IOLimits, device: str) -> None:
    for field, name in _FILES.items():
        value = getattr(io, field)
        if value is not None:
            # 0 removes the rule: v1 has no "max" word.
            fs.write(os.path.join(path, name), f"{device} {value}")


def stats(path: str) -> dict[str, int | None]:
    for name in ("blkio.throttle.io_service_bytes_recursive", "blkio.io_service_bytes_recursive"):
        try:
            text = fs.read(os.path.join(path, name))
        except FileNotFoundError:
            continue
        read = write = 0
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[2].isdigit():
                if parts[1] == "Read":
                    read += int(parts[2])
                elif parts[1] == "Write":
                    write += int(parts[2])
        return {"io_read_bytes": read, "io_write_bytes": write}
    return {"io_read_bytes": None, "io_write_bytes": None}
