"""Where an instance's cgroups go, and making / removing them.

In every hierarchy the instance's cgroup is
``<mountpoint>/<our own path>/stockade/<host_tag>/<instance name>``: beneath our own
cgroup (never writing to the ones above it), grouped per host root so two roots and
``gc`` never touch each other's instances.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from . import fs
from .detect import Hierarchy
from .v1 import cpuset as v1_cpuset
from .v1 import freezer as v1_freezer
from .v2 import core as v2_core

PARENT = "stockade"

# v1 hierarchies stockade makes a cgroup in; others (net_cls, perf_event, ...) are left alone.
V1_USED = frozenset({"memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer", "devices"})
V2_USED = frozenset({"memory", "cpu", "cpuset", "pids", "io"})


@dataclass(frozen=True)
class Group:
    """One instance cgroup in one hierarchy; stored in ctx.bag("quota") as a dict."""

    path: str
    version: Literal[1, 2]
    controllers: frozenset[str]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "version": self.version, "controllers": sorted(self.controllers)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Group:
        return cls(str(d["path"]), 2 if d.get("version") == 2 else 1, frozenset(d.get("controllers", ())))

    @property
    def tag_dir(self) -> str:
        return os.path.dirname(self.path)

    @property
    def parent_dir(self) -> str:
        return os.path.dirname(self.tag_dir)


def used(h: Hierarchy) -> bool:
    return h.version == 2 or bool(h.controllers & V1_USED)


def tag_dir(h: Hierarchy, host_tag: str) -> str:
    return os.path.join(h.own_dir, PARENT, host_tag)


def leaf(h: Hierarchy, host_tag: str, name: str) -> str:
    return os.path.join(tag_dir(h, host_tag), name)


def make_v1(h: Hierarchy, host_tag: str, name: str) -> Group:
    chain = [
        h.own_dir,
        os.path.join(h.own_dir, PARENT),
        tag_dir(h, host_tag),
        leaf(h, host_tag, name),
    ]
    # The parents are there but for the first instance of a host root: one mkdir, not
    # three (~45 us each on cgroupfs, times every hierarchy, on every `run`).
    try:
        if fs.mkdir(chain[-1]):
            if "cpuset" not in h.controllers:
                return Group(chain[-1], 1, h.controllers)
            v1_cpuset.inherit(chain[-2], chain[-1])
            if all(v1_cpuset.allowed(chain[-1])):  # else a parent is still being set up
                return Group(chain[-1], 1, h.controllers)
    except FileNotFoundError:
        pass
    for attempt in range(5):
        try:
            for parent, child in itertools.pairwise(chain):
                fs.mkdir(child)
                if "cpuset" in h.controllers:
                    v1_cpuset.inherit(parent, child)
            break
        except FileNotFoundError:
            # A concurrent destroy removed an empty stockade/<tag> between our mkdirs.
            if attempt == 4:
                raise
    return Group(chain[-1], 1, h.controllers)


def make_v2(h: Hierarchy, host_tag: str, name: str, required: Iterable[str], move_ok: bool) -> Group:
    chain = [h.own_dir, os.path.join(h.own_dir, PARENT), tag_dir(h, host_tag)]
    path = leaf(h, host_tag, name)
    need = frozenset(required)
    for attempt in range(5):
        try:
            for d in chain[1:]:
                fs.mkdir(d)
            v2_core.delegate(chain, V2_USED & h.controllers, need, move_ok)
            fs.mkdir(path)
            break
        except FileNotFoundError:
            if attempt == 4:
                raise
    return Group(path, 2, v2_core.controllers(path))


def all_pids(path: str) -> list[int]:
    out: list[int] = []
    for sub in fs.walk_down(path):
        out.extend(fs.procs(sub))
    return out


def kill_all(groups: Iterable[Group], timeout: float) -> list[int]:
    """SIGKILL everything in ``groups`` until they are empty; return pids still there at timeout."""
    groups = list(groups)
    for g in groups:
        if g.version == 1 and "freezer" in g.controllers:
            for sub in fs.walk_down(g.path):
                if v1_freezer.is_frozen(sub):
                    # v1-frozen tasks cannot act on SIGKILL until thawed.
                    fs.write(os.path.join(sub, "freezer.state"), "THAWED")
    for g in groups:
        if g.version == 2 and fs.exists(g.path):
            v2_core.kill(g.path)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        left = sorted({pid for g in groups for pid in all_pids(g.path)})
        if not left or time.monotonic() > deadline:
            return left
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def remove(path: str, timeout: float) -> list[str]:
    """rmdir ``path`` and its sub-cgroups (made inside the instance), deepest first."""
    removed: list[str] = []
    for sub in reversed(list(fs.walk_down(path))):
        deadline = time.monotonic() + timeout
        while True:
            try:
                if fs.rmdir(sub):
                    removed.append(sub)
                break
            except OSError as e:
                # Exiting tasks can hold a cgroup busy for a moment after cgroup.procs is empty.
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
    return removed


def prune(dirs: Iterable[str]) -> None:
    """Remove stockade/<tag> and stockade/ if nothing else lives there any more."""
    for d in dirs:
        try:
            fs.rmdir(d)
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
                raise
