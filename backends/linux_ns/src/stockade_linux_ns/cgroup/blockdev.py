"""The block device that I/O limits go on: throttling applies to whole disks, not partitions."""

from __future__ import annotations

import os
import re

from . import fs

_DEV = re.compile(r"^\d+:\d+$")


def whole_disk(device: str, sysfs: str = "/sys/dev/block") -> str:
    """The "MAJ:MIN" of the disk holding ``device`` (itself unless it is a partition)."""
    if not _DEV.match(device):
        raise ValueError(f"{device!r} is not a block device number (MAJ:MIN)")
    node = os.path.join(sysfs, device)
    if fs.exists(os.path.join(node, "partition")):
        # /sys/dev/block/MAJ:MIN links to .../<disk>/<partition>; the disk is the parent dir.
        return fs.read(os.path.join(os.path.realpath(node), "..", "dev"))
    return device
