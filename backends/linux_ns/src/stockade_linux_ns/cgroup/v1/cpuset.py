"""v1 cpuset: a new cpuset has no CPUs and no memory nodes, so nothing can join it.

Every directory created below our own cgroup is filled from its parent first.
"""

from __future__ import annotations

import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "cpuset"


def inherit(parent: str, child: str) -> None:
    """Copy cpuset.cpus and cpuset.mems from ``parent`` to ``child`` where the child's are empty."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        f = os.path.join(child, name)
        if fs.read(f) == "":
            fs.write(f, fs.read(os.path.join(parent, name)))


def apply(path: str, res: Resources) -> None:
    if res.cpuset_mems is not None:
        fs.write(os.path.join(path, "cpuset.mems"), res.cpuset_mems)
    if res.cpuset_cpus is not None:
        fs.write(os.path.join(path, "cpuset.cpus"), res.cpuset_cpus)


def allowed(path: str) -> tuple[str, str]:
    """(cpus, mems) a cgroup at ``path`` may hand to its children."""
    return (
        fs.read(os.path.join(path, "cpuset.effective_cpus")),
        fs.read(os.path.join(path, "cpuset.effective_mems")),
    )
