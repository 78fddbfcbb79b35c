"""Which hierarchy serves each controller: v1 mounts, the v2 unified mount, or both (hybrid).

Read from /proc/self/mountinfo (what is mounted where, which controllers each v1
mount carries) and /proc/self/cgroup (our own path in every hierarchy). ``parse`` is
pure so odd layouts (co-mounted ``cpu,cpuacct``, cgroup namespaces, a v2-only host)
can be tested from text.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Literal

from . import fs

Mode = Literal["v1", "v2", "hybrid"]
Prefer = Literal["auto", "v1", "v2"]

# v1 controllers; other super options (rw, name=systemd, ...) are not controllers.
V1_CONTROLLERS = frozenset(
    {
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "net_cls",
        "net_prio",
        "perf_event",
        "hugetlb",
        "rdma",
        "misc",
    }
)

# On v2 a cgroup with controllers enabled for its children may hold no processes. When our
# own cgroup holds processes, they are moved into this leaf (see v2/core.py); processes
# started there later still place stockade/ beside it, in the same parent.
V2_LEAF = "stockade-leaf"

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(s: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), s)


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and where we sit in it."""

    version: Literal[1, 2]
    mountpoint: str
    controllers: frozenset[str]  # v1: those mounted here; v2: those available to our cgroup
    own: str  # our path inside the hierarchy, relative to its mount ("/" = the mount itself)

    @property
    def own_dir(self) -> str:
        return os.path.normpath(self.mountpoint + "/" + self.own.lstrip("/"))

    @property
    def key(self) -> str:
        """A stable name for the hierarchy: "unified" or its controllers joined by ','."""
        return "unified" if self.version == 2 else ",".join(sorted(self.controllers))


@dataclass(frozen=True)
class Layout:
    mode: Mode
    v1: tuple[Hierarchy, ...] = ()
    unified: Hierarchy | None = None
    notes: tuple[str, ...] = field(default=())  # why a mount was left out, for probe()

    def v1_for(self, controller: str) -> Hierarchy | None:
        for h in self.v1:
            if controller in h.controllers:
                return h
        return None

    def where(self, controller: str) -> Literal["v1", "v2"] | None:
        """Which version serves ``controller`` (v2 names: io, not blkio)."""
        v1_name = {"io": "blkio"}.get(controller, controller)
        if self.v1_for(v1_name) is not None:
            return "v1"
        if self.unified is not None and controller in self.unified.controllers:
            return "v2"
        return None

    @property
    def hierarchies(self) -> tuple[Hierarchy, ...]:
        return self.v1 + ((self.unified,) if self.unified is not None else ())


def _own_paths(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """controller -> our path (v1), and our v2 path, from /proc/self/cgroup."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrls, path = parts
        if hid == "0" and ctrls == "":
            v2 = path
            continue
        for c in ctrls.split(","):
            v1[c] = path
    return v1, v2


def _relative(own: str, mount_root: str) -> str:
    # A mount of a sub-tree (a container's bind of its own cgroup) has a root other than "/";
    # /proc/self/cgroup paths are from the hierarchy's (or the cgroup namespace's) root.
    if mount_root not in ("/", "") and (own == mount_root or own.startswith(mount_root + "/")):
        return own[len(mount_root) :] or "/"
    return own


def parse(
    mountinfo: str,
    proc_cgroup: str,
    prefer: Prefer = "auto",
    v2_controllers: frozenset[str] | None = None,
) -> Layout:
    """Build the layout from the two files' text. ``v2_controllers``: our cgroup.controllers."""
    own_v1, own_v2 = _own_paths(proc_cgroup)
    v1: list[Hierarchy] = []
    unified: Hierarchy | None = None
    seen: set[frozenset[str]] = set()
    notes: list[str] = []
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        pf = pre.split()
        fstype, _source, superopts = [*post.split(), "", "", ""][:3]
        if len(pf) < 6:
            continue
        root, mountpoint, mount_opts = _unescape(pf[3]), _unescape(pf[4]), pf[5]
        if fstype == "cgroup" and prefer != "v2":
            ctrls = frozenset(o for o in superopts.split(",") if o in V1_CONTROLLERS)
            if not ctrls or ctrls in seen:
                continue  # named hierarchies (name=systemd) and second mounts of one hierarchy
            if "ro" in mount_opts.split(","):
                notes.append(f"{mountpoint} is mounted read-only")
            first = sorted(ctrls)[0]
            if first not in own_v1:
                notes.append(f"{mountpoint}: not in /proc/self/cgroup")
                continue
            seen.add(ctrls)
            v1.append(Hierarchy(1, mountpoint, ctrls, _relative(own_v1[first], root)))
        elif fstype == "cgroup2" and prefer != "v1" and unified is None:
            if own_v2 is None:
                notes.append(f"{mountpoint}: no 0:: line in /proc/self/cgroup")
                continue
            if "ro" in mount_opts.split(","):
                notes.append(f"{mountpoint} is mounted read-only")
            own = _relative(own_v2, root)
            if os.path.basename(own) == V2_LEAF:
                own = os.path.dirname(own)
            unified = Hierarchy(2, mountpoint, v2_controllers or frozenset(), own)
    # A controller bound to a v1 hierarchy is never usable on v2 at the same time.
    if unified is not None and v1:
        taken = frozenset().union(*(h.controllers for h in v1))
        unified = Hierarchy(2, unified.mountpoint, unified.controllers - taken, unified.own)
    mode: Mode = "hybrid" if (v1 and unified) else ("v1" if v1 else "v2")
    return Layout(mode, tuple(v1), unified, tuple(notes))


def detect(prefer: Prefer = "auto") -> Layout:
    """The layout of this process's cgroups, read from /proc/self."""
    mountinfo = fs.read("/proc/self/mountinfo")
    proc_cgroup = fs.read("/proc/self/cgroup")
    layout = parse(mountinfo, proc_cgroup, prefer)
    if layout.unified is None:
        return layout
    try:
        text = fs.read(os.path.join(layout.unified.own_dir, "cgroup.controllers"))
    except OSError:
        text = ""
    return parse(mountinfo, proc_cgroup, prefer, frozenset(text.split()))
