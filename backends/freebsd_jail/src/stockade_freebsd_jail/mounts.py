"""Mounts made on the host before anything enters the jail, as nmount(2) plans.

devfs with the jail's ruleset (as jail(8) mounts it), nullfs for the spec's bind
mounts (read-only through ``MNT_RDONLY``), tmpfs, and a read-only nullfs view of the
root when the spec asks for a read-only root. Unmounted in reverse order.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from stockade.errors import IsolationError
from stockade.spec import InstanceSpec

from ._ffi import MNT_RDONLY
from .iovec import Params


@dataclass(frozen=True)
class MountStep:
    fstype: str
    fspath: str
    source: str
    readonly: bool = False
    options: tuple[tuple[str, str | bool], ...] = ()

    @property
    def flags(self) -> int:
        return MNT_RDONLY if self.readonly else 0

    def params(self) -> Params:
        """The nmount pairs (``errmsg`` is appended when the iovec is built)."""
        # nullfs names its source "target" (ocijail's do_mount); the others take "from"
        source_key = "target" if self.fstype == "nullfs" else "from"
        return [("fstype", self.fstype), ("fspath", self.fspath), (source_key, self.source), *self.options]


@dataclass(frozen=True)
class MountPlan:
    jail_path: str  # what the jail's ``path`` parameter names
    steps: tuple[MountStep, ...]
    mountpoints: tuple[str, ...]  # directories to create first, in the writable root


def _options(raw: tuple[str, ...]) -> tuple[tuple[str, str | bool], ...]:
    out: list[tuple[str, str | bool]] = []
    for opt in raw:
        key, eq, value = opt.partition("=")
        if key in ("ro", "rw"):
            continue  # readonly is the spec's field, sent as MNT_RDONLY
        out.append((key, value) if eq else (key, True))
    return tuple(out)


def plan_mounts(spec: InstanceSpec, rootfs: str, run_dir: str, devfs_ruleset: int) -> MountPlan:
    root = rootfs.rstrip("/") or "/"
    steps: list[MountStep] = []
    jail_path = root
    if spec.readonly_rootfs:
        jail_path = os.path.join(run_dir, "root")
        steps.append(MountStep("nullfs", jail_path, root, readonly=True))
    points = ["/dev"]
    steps.append(MountStep("devfs", jail_path + "/dev", "devfs", options=(("ruleset", str(devfs_ruleset)),)))
    for m in spec.mounts:
        points.append(m.target)
        fspath = jail_path + m.target
        if m.type == "tmpfs":
            steps.append(MountStep("tmpfs", fspath, "tmpfs", m.readonly, _options(m.options)))
        else:
            steps.append(MountStep("nullfs", fspath, m.source, m.readonly, _options(m.options)))
    return MountPlan(jail_path, tuple(steps), tuple(points))


def make_mountpoint(root: str, target: str) -> str:
    """Create ``root + target`` as a directory, refusing symlinks on the way (a symlink in the
    image must not redirect a host mount outside the root)."""
    path = root.rstrip("/")
    for part in [p for p in target.split("/") if p]:
        path = f"{path}/{part}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            os.mkdir(path, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise IsolationError(
                f"mount point {target!r} passes through a symlink in the root "
                f"({path!r}); use a path without symlinks"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise IsolationError(f"mount point {target!r}: {path!r} is not a directory")
    return path
