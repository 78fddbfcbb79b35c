"""v2 cpuset: cpuset.cpus / cpuset.mems (empty means "the parent's", no copying needed)."""

from __future__ import annotations

import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "cpuset"


def apply(path: str, res: Resources) -> None:
    if res.cpuset_mems is not None:
        fs.write(os.path.join(path, "cpuset.mems"), res.cpuset_mems)
    if res.cpuset_cpus is not None:
        fs.write(os.path.join(path, "cpuset.cpus"), res.cpuset_cpus)


def allowed(path: str) -> tuple[str, str]:
    """(cpus, mems) our own cgroup has: its effective sets."""
    return (
        fs.read(os.path.join(path, "cpuset.cpus.effective")),
        fs.read(os.path.join(path, "cpuset.mems.effective")),
    )
