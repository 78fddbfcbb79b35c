"""The ``overlay`` storage backend: copy-on-write root file systems on overlayfs.

An instance's root is ``lowerdir=<layers>,upperdir,workdir`` mounted at its ``merged``
dir: provision makes three empty directories and one mount, whatever the image size.
A snapshot commits a copy of the current upper as a new read-only layer (whiteouts and
opaque-dir xattrs included) and remembers the stack it sits on; rollback mounts
``[snapshot] + its base`` with a fresh upper, so any snapshot can be restored exactly.
A snapshot is a copy of a live upper: freeze the instance first for a consistent one.

Layout under ``<root>/storage/overlay/``::

    images/<image>/                       lowest layer, shared by every instance of the image
    instances/<id>/meta.json              layers (top first), upper, work, snapshots + bases
    instances/<id>/upper-<gen>/ work-<gen>/   <gen> grows with each rollback
    instances/<id>/merged/                the mount point handed out as RootFS.path
    instances/<id>/snapshots/<name>/      committed layers

With the option ``quota_fs = "btrfs"`` (quota.py) the same tree sits on a loop-backed
btrfs, and upper-/work-/snapshots live in ``instances/<id>/data/``, a subvolume with the
instance's disk quota (meta.json stays outside it, so a full instance can still be managed).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from stockade.builtin.dir_storage import (
    FileTreeStorage,
    copy_tree,
    remove_tree,
    tmp_name,
    tree_usage,
)
from stockade.errors import NotFound, StateConflict, StorageError
from stockade.features import Feature, Probe, Semantics
from stockade.interfaces import BackendConfig, InstanceContext, RootFS, Snapshot, StorageUsage
from stockade.spec import InstanceSpec

# Pinned so a layer written here reads the same under any kernel defaults: no index (layers
# move between stacks), no metacopy (a committed layer holds whole files), no redirects
# (a committed layer never points into another stack).
MOUNT_OPTIONS = "index=off,metacopy=off,redirect_dir=off"
MOUNT_SOURCE = "stockade-overlay"
_MAX_DATA = 4095  # mount(2) copies one page of options
_SPECIAL = (",", ":", "\\")  # separators in overlay's option syntax


QUOTA_FS = ("btrfs",)


def quota_fs(config: BackendConfig) -> str | None:
    """The ``quota_fs`` option: None (plain overlay on the host's file system) or "btrfs"."""
    value = config.options.get("quota_fs")
    if value in (None, "", "none"):
        return None
    if value not in QUOTA_FS:
        why = (
            " (xfs project quotas were measured out: this kernel has no CONFIG_XFS_QUOTA; "
            "see docs/storage.md)"
            if value == "xfs"
            else ""
        )
        raise StorageError(f"overlay option quota_fs: {value!r} is not one of none, btrfs{why}")
    return str(value)


class OverlayStorage(FileTreeStorage):
    """Plain mode: uppers on the host root's own file system; no disk quota, no block device.

    With the option ``quota_fs = "btrfs"`` the object made is a ``QuotaOverlayStorage``
    (quota.py), which declares DISK_QUOTA and io_limit_on = "block_device": what a
    backend declares is a class attribute, so each mode is its own class.
    """

    name: ClassVar[str] = "overlay"
    priority: ClassVar[int] = 100
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.COPY_ON_WRITE, Feature.SNAPSHOT})
    semantics: ClassVar[Semantics] = Semantics(
        restore="any_snapshot",
        extra={"snapshot": "layer (copy of the upper)", "clone": "O(1) overlay mount"},
    )

    def __new__(cls, config: BackendConfig) -> OverlayStorage:
        if cls is OverlayStorage and quota_fs(config) is not None:
            from .quota import QuotaOverlayStorage

            return super().__new__(QuotaOverlayStorage)
        return super().__new__(cls)

    def check(self, spec: InstanceSpec) -> list[str]:
        problems: list[str] = []
        if spec.resources.disk is not None and Feature.DISK_QUOTA not in self.features:
            problems.append(
                f"resources.disk: storage {self.name!r} has no disk quota in this configuration "
                "(set its option quota_fs = 'btrfs')"
            )
        if spec.resources.io.any() and self.semantics.io_limit_on != "block_device":
            problems.append(
                f"resources.io: storage {self.name!r} has no block device to limit I/O on in this "
                "configuration (set its option quota_fs = 'btrfs')"
            )
        return problems

    def probe(self) -> Probe:
        if not sys.platform.startswith("linux"):
            return Probe.no("overlayfs needs Linux")
        from .hostfs import (
            UNFIT_UPPER,
            existing_ancestor,
            fs_type,
            kernel_has_overlay,
            supports_trusted_xattrs,
        )

        if not kernel_has_overlay():
            return Probe.no(
                "the kernel has no overlay file system (not in /proc/filesystems; try modprobe overlay)"
            )
        if os.geteuid() != 0:
            return Probe.no("overlay mounts need root (CAP_SYS_ADMIN in the host user namespace)")
        where = existing_ancestor(self.base)
        fstype, mountpoint = fs_type(where)
        if fstype in UNFIT_UPPER or fstype.startswith("fuse"):
            why = " (an overlay cannot be the upper of another)" if fstype == "overlay" else ""
            return Probe.no(
                f"root {self.config.root} is on {fstype} (mounted at {mountpoint}), "
                f"which cannot hold an overlay upper dir{why}; use a root on ext4, xfs, "
                "btrfs or tmpfs"
            )
        if not supports_trusted_xattrs(where):
            return Probe.no(
                f"{fstype} at {mountpoint} has no trusted.* xattrs, which overlay needs "
                "for whiteouts and opaque dirs"
            )
        return Probe.yes()

    # -- layout --

    # Where the instance's data (uppers, work dirs, snapshot layers) lives, relative to its
    # directory: "" here; quota mode puts it in a subvolume so its record stays outside.
    DATA: ClassVar[str] = ""

    def _data(self, ctx: InstanceContext, name: str) -> Path:
        return self.instance_dir(ctx) / self.DATA / name

    def _layer_rel(self, ctx: InstanceContext, snapshot: str) -> str:
        return self._data(ctx, f"snapshots/{snapshot}").relative_to(self.base).as_posix()

    def _paths(self, ctx: InstanceContext, meta: dict[str, Any]) -> tuple[Path, Path, Path]:
        d = self.instance_dir(ctx)
        return d / meta["upper"], d / meta["work"], d / meta["merged"]

    # -- clone and mount --

    def provision(self, ctx: InstanceContext) -> RootFS:
        image = self._require_image(ctx.spec.image)
        d = self._start_instance_dir(ctx)
        try:
            upper, work = self._data(ctx, "upper-0"), self._data(ctx, "work-0")
            for sub in (upper, work, d / "merged"):
                sub.mkdir(mode=0o700)
            _copy_root_attrs(image, upper)
            meta = self._new_record(ctx)
            meta.update(
                layers=[image.relative_to(self.base).as_posix()],
                upper=upper.relative_to(d).as_posix(),
                work=work.relative_to(d).as_posix(),
                merged="merged",
                gen=0,
            )
            self._save(ctx, meta)
            return self._mount(ctx, meta, check_mounted=False)
        except BaseException as e:
            self.release(ctx)
            if isinstance(e, OSError):
                raise StorageError(
                    f"instance {ctx.name!r}: provision failed: {e.strerror} ({e.filename})"
                ) from e
            raise

    def mount(self, ctx: InstanceContext) -> RootFS:
        return self._mount(ctx, self._load(ctx), check_mounted=True)

    def _mount(self, ctx: InstanceContext, meta: dict[str, Any], check_mounted: bool) -> RootFS:
        from stockade import linux

        merged = self._paths(ctx, meta)[2]
        rootfs = RootFS(path=str(merged))
        if check_mounted and linux.is_mountpoint(str(merged)):
            return rootfs
        d = self.instance_dir(ctx).relative_to(self.base).as_posix()
        rels = [*meta["layers"], f"{d}/{meta['upper']}", f"{d}/{meta['work']}"]
        for rel in rels:
            if not (self.base / rel).is_dir():
                raise StorageError(
                    f"instance {ctx.name!r}: {self.base / rel} is missing (half-made; release and "
                    "provision it again)"
                )
            if any(c in rel for c in _SPECIAL):
                raise StorageError(
                    f"instance {ctx.name!r}: layer path {rel!r} contains one of {' '.join(_SPECIAL)}, "
                    "which overlay options cannot carry"
                )
        # Layers are named through an fd of the storage root: the options the kernel shows in
        # every mount table, the instance's included, then carry no host path (and stay short).
        fd = os.open(self.base, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            via = f"/proc/self/fd/{fd}"
            *lowers, up, wk = (f"{via}/{rel}" for rel in rels)
            data = f"lowerdir={':'.join(lowers)},upperdir={up},workdir={wk},{MOUNT_OPTIONS}"
            if len(data.encode()) > _MAX_DATA:
                raise StorageError(
                    f"instance {ctx.name!r}: {len(lowers)} layers are too many for one "
                    "overlay mount; delete snapshots that are no longer needed"
                )
            linux.mount(MOUNT_SOURCE, str(merged), "overlay", 0, data)
        except OSError as e:
            raise StorageError(
                f"instance {ctx.name!r}: cannot mount overlay on {merged}: "
                f"{e.strerror} (see dmesg for overlayfs' reason)"
            ) from e
        finally:
            os.close(fd)
        return rootfs

    def unmount(self, ctx: InstanceContext) -> None:
        try:
            meta = self._load(ctx)
        except NotFound:
            return
        self._unmount(ctx, self._paths(ctx, meta)[2])

    def _unmount(self, ctx: InstanceContext, merged: Path) -> bool:
        """Unmount strictly (no lazy detach: rollback swaps layers next). True if it was mounted."""
        from stockade import linux

        was = False
        for mp in linux.mounts_under(str(merged)):
            try:
                linux.umount(mp)
                was = True
            except OSError as e:
                if e.errno == errno.EINVAL:  # raced with another unmount
                    continue
                if e.errno == errno.EBUSY:
                    raise StateConflict(
                        f"root file system of instance {ctx.name!r} is busy ({mp}); stop what uses it first"
                    ) from e
                raise StorageError(f"instance {ctx.name!r}: cannot unmount {mp}: {e.strerror}") from e
        return was

    # -- snapshots --

    def snapshot(self, ctx: InstanceContext, name: str) -> Snapshot:
        meta = self._load(ctx)
        self._check_new_snapshot(ctx, meta, name)
        upper, _, _ = self._paths(ctx, meta)
        snaps = self._data(ctx, "snapshots")
        dest = snaps / name
        remove_tree(dest)  # left by a snapshot interrupted before its record was written
        tmp = snaps / tmp_name(name)
        try:
            snaps.mkdir(exist_ok=True)
            # cp -a keeps whiteouts (0/0 char devices) and trusted.overlay.* (opaque dirs);
            # reading an upper under a live mount is allowed, only writing to it is not.
            copy_tree(upper, tmp)
            os.rename(tmp, dest)
        except BaseException as e:
            remove_tree(tmp)
            if isinstance(e, OSError):
                raise StorageError(f"instance {ctx.name!r}: snapshot {name!r} failed: {e.strerror}") from e
            raise
        snap = Snapshot(name=name, created=time.time(), size=tree_usage(dest))
        meta["snapshots"][name] = {
            "created": snap.created,
            "size": snap.size,
            "base": list(meta["layers"]),
        }
        self._save(ctx, meta)
        return snap

    def rollback(self, ctx: InstanceContext, name: str) -> None:
        meta = self._load(ctx)
        snap = self._snapshot_record(ctx, meta, name)
        d = self.instance_dir(ctx)
        upper, work, merged = self._paths(ctx, meta)
        layer = self.base / self._layer_rel(ctx, name)
        if not layer.is_dir():
            raise StorageError(f"instance {ctx.name!r}: layer of snapshot {name!r} is missing ({layer})")
        was_mounted = self._unmount(ctx, merged)
        gen = int(meta["gen"]) + 1
        new_upper, new_work = self._data(ctx, f"upper-{gen}"), self._data(ctx, f"work-{gen}")
        try:
            for p in (new_upper, new_work):
                remove_tree(p)
                p.mkdir(mode=0o700)
            _copy_root_attrs(layer, new_upper)
        except OSError as e:
            raise StorageError(f"instance {ctx.name!r}: rollback to {name!r} failed: {e.strerror}") from e
        # The switch is the atomic record write: before it the old stack is intact, after it
        # the new one is complete.
        meta.update(
            layers=[self._layer_rel(ctx, name), *snap["base"]],
            upper=new_upper.relative_to(d).as_posix(),
            work=new_work.relative_to(d).as_posix(),
            gen=gen,
        )
        self._save(ctx, meta)
        for p in (upper, work):
            remove_tree(p)
        if was_mounted:
            self._mount(ctx, meta, check_mounted=False)

    def delete_snapshot(self, ctx: InstanceContext, name: str) -> None:
        meta = self._load(ctx)
        self._snapshot_record(ctx, meta, name)
        rel = self._layer_rel(ctx, name)
        if rel in meta["layers"]:
            raise StateConflict(
                f"snapshot {name!r} of instance {ctx.name!r} is a layer of its current "
                "root (it was rolled back onto it); roll back to a snapshot not built "
                "on it first"
            )
        users = sorted(n for n, s in meta["snapshots"].items() if n != name and rel in s["base"])
        if users:
            raise StateConflict(
                f"snapshot {name!r} of instance {ctx.name!r} is the base of snapshot(s) "
                f"{', '.join(users)}; delete those first"
            )
        del meta["snapshots"][name]
        self._save(ctx, meta)
        remove_tree(self.base / rel)

    def usage(self, ctx: InstanceContext) -> StorageUsage:
        meta = self._load(ctx)
        upper, _, _ = self._paths(ctx, meta)
        return StorageUsage(used=tree_usage(upper, self._data(ctx, "snapshots")))


def _copy_root_attrs(src: Path, dst: Path) -> None:
    # The merged root takes owner and mode from the upper's root, not from the layers.
    st = src.lstat()
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
