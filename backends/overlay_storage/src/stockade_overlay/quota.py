"""The ``overlay`` backend with ``quota_fs = "btrfs"``: a disk quota and a block device.

The backend's whole storage dir is a loop-backed btrfs (quotafs.py), one per host root.
Each instance directory is a btrfs subvolume, and so a quota group: its limit on
*exclusive* bytes is ``resources.disk``. What counts is what only this instance holds:
its upper and work dirs and its snapshot layers; image data is shared, so a file
copied up from the image costs nothing until it is rewritten (the copy-up is a
reflink, ~0.3 ms for 1 GiB, where an upper on ext4 copies every byte). A snapshot
layer is a reflinked copy of the upper inside the same subvolume, so it is counted once.

The root file system's ``device`` is the loop device: blkio throttling (v1) and io.max
(v2) on it limit the instance, because the loop driver runs the I/O of each cgroup in
that cgroup (measured: docs/storage.md). Release destroys the subvolume (one ioctl,
whatever its size) and its quota group; gc unmounts the shared file system once no
instance is left, which detaches its loop device.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from stockade.builtin.dir_storage import remove_tree, tmp_owner_gone, unmount_below
from stockade.errors import StorageError
from stockade.features import Feature, Probe, Semantics
from stockade.interfaces import BackendConfig, InstanceContext, RootFS, StorageUsage
from stockade.spec import InstanceSpec, format_size

from . import btrfs
from .backend import OverlayStorage
from .quotafs import SharedFs, parse_size


class QuotaOverlayStorage(OverlayStorage):
    """What ``OverlayStorage(config)`` is when ``config.options["quota_fs"] == "btrfs"``."""

    features: ClassVar[frozenset[Feature]] = frozenset(
        {Feature.COPY_ON_WRITE, Feature.SNAPSHOT, Feature.DISK_QUOTA}
    )
    semantics: ClassVar[Semantics] = Semantics(
        quota_scope="exclusive",
        io_limit_on="block_device",
        restore="any_snapshot",
        extra={
            "snapshot": "layer (reflinked copy of the upper)",
            "clone": "O(1) overlay mount + btrfs subvolume",
            "disk_quota": "btrfs qgroup on the instance's exclusive bytes: upper, work, snapshots; "
            "image data shared until rewritten",
            "io_limit": "the host root's loop device (shared by its instances; limits are per cgroup)",
        },
    )

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        storage = Path(config.root) / "storage"
        self.fs = SharedFs(
            image=storage / f"{self.name}.btrfs",
            mountpoint=self.base,
            label=f"stockade-{config.host_tag}"[:255],
            size=parse_size(config.options.get("quota_fs_size")),
        )

    # -- probe and check --

    def probe(self) -> Probe:
        p = super().probe()
        if not p.ok:
            return p
        from .hostfs import kernel_has

        if not kernel_has("btrfs"):
            return Probe.no("quota_fs 'btrfs': the kernel has no btrfs (not in /proc/filesystems)")
        if not os.path.exists("/dev/loop-control"):
            return Probe.no("quota_fs 'btrfs': no /dev/loop-control (the kernel has no loop driver)")
        if not self.fs.exists():
            import shutil

            if not (shutil.which("mkfs.btrfs") or shutil.which("mkfs.btrfs", path="/usr/sbin:/sbin")):
                return Probe.no("quota_fs 'btrfs': mkfs.btrfs not found (install btrfs-progs)")
            if self.base.is_dir() and any(not e.startswith(".") for e in os.listdir(self.base)):
                return Probe.no(
                    f"quota_fs 'btrfs': {self.base} already holds overlay storage made without "
                    "quota_fs; use another root"
                )
        return Probe.yes()

    def check(self, spec: InstanceSpec) -> list[str]:
        problems = super().check(spec)
        disk = spec.resources.disk
        size = self.fs.size if not self.fs.exists() else self.fs.image.stat().st_size
        if disk is not None and size is not None and disk > size:
            problems.append(
                f"resources.disk: {format_size(disk)} is more than the storage file system "
                f"{self.fs.image} holds ({format_size(size)}); raise option quota_fs_size"
            )
        return problems

    # -- the shared file system is there before anything is read or made --

    def _ready(self, create: bool) -> bool:
        return self.fs.ensure(create) is not None

    def has_image(self, image: str) -> bool:
        return self._ready(create=False) and super().has_image(image)

    def list_images(self) -> list[str]:
        return super().list_images() if self._ready(create=False) else []

    def import_image(self, image: str, source: Path) -> None:
        self._ready(create=True)
        super().import_image(image, source)

    def remove_image(self, image: str) -> None:
        self._ready(create=False)
        super().remove_image(image)

    def _load(self, ctx: InstanceContext) -> dict[str, Any]:
        self._ready(create=False)
        return super()._load(ctx)

    def provision(self, ctx: InstanceContext) -> RootFS:
        self._ready(create=True)
        return super().provision(ctx)

    # -- an instance is a subvolume with a limit --

    DATA: ClassVar[str] = "data"  # the subvolume; meta.json stays outside, never over quota

    def _make_instance_dir(self, d: Path) -> None:
        super()._make_instance_dir(d)
        btrfs.create_subvolume(str(d), self.DATA)
        os.chmod(d / self.DATA, 0o700)

    def _new_record(self, ctx: InstanceContext) -> dict[str, Any]:
        meta = super()._new_record(ctx)
        disk = ctx.spec.resources.disk
        try:
            meta["subvolume"] = btrfs.subvolume_id(str(self._data(ctx, "")))
            btrfs.set_exclusive_limit(str(self.base), meta["subvolume"], disk)
        except OSError as e:
            raise StorageError(
                f"instance {ctx.name!r}: cannot set its disk quota: {e.strerror} ({e.filename})"
            ) from e
        meta["quota"] = disk
        return meta

    def _mount(self, ctx: InstanceContext, meta: dict[str, Any], check_mounted: bool) -> RootFS:
        rootfs = super()._mount(ctx, meta, check_mounted)
        return dataclasses.replace(rootfs, device=self.fs.device())

    def mount(self, ctx: InstanceContext) -> RootFS:
        self._ready(create=False)
        return super().mount(ctx)

    def set_quota(self, ctx: InstanceContext, size: int | None) -> None:
        """Change the instance's disk quota live (None removes it). Below the current usage,
        further writes fail with EDQUOT; nothing is deleted."""
        meta = self._load(ctx)
        try:
            btrfs.set_exclusive_limit(str(self.base), int(meta["subvolume"]), size)
        except OSError as e:
            raise StorageError(f"instance {ctx.name!r}: cannot change its disk quota: {e.strerror}") from e
        meta["quota"] = size
        self._save(ctx, meta)

    def usage(self, ctx: InstanceContext) -> StorageUsage:
        meta = self._load(ctx)
        mp = str(self.base)
        try:
            btrfs.sync(mp)  # quota groups are counted at transaction commit
            u = btrfs.usage(mp, int(meta["subvolume"]))
            st = os.statvfs(mp)
        except (OSError, KeyError, ValueError) as e:
            raise StorageError(f"instance {ctx.name!r}: cannot read its disk usage: {e}") from e
        free = st.f_bavail * st.f_frsize
        available = free if u.max_exclusive is None else max(0, min(free, u.max_exclusive - u.exclusive))
        return StorageUsage(used=u.exclusive, quota=u.max_exclusive, available=available)

    # -- release and gc --

    def _remove_instance(self, d: Path) -> bool:
        vol = d / self.DATA
        if btrfs.is_subvolume(str(vol)):
            # One ioctl whatever the size, where rm -r would walk every file.
            unmount_below(d)
            try:
                sub_id = btrfs.subvolume_id(str(vol))
                btrfs.destroy_subvolume(str(d), self.DATA)
            except OSError as e:
                raise StorageError(f"cannot delete subvolume {vol}: {e.strerror}") from e
            # Refused while the kernel still drops the subvolume (newer kernels then remove
            # the group themselves; gc retries on older ones).
            btrfs.remove_qgroup(str(self.base), sub_id)
        return remove_tree(d)

    def release(self, ctx: InstanceContext) -> None:
        if self._ready(create=False):
            super().release(ctx)
        else:
            ctx.data.pop("storage", None)

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        gone: list[str] = []
        storage = self.fs.image.parent
        for e in os.scandir(storage) if storage.is_dir() else []:
            if e.name.startswith(".tmp-") and e.name.endswith(self.fs.image.name) and tmp_owner_gone(e.name):
                os.unlink(e.path)
                gone.append(f"storage {self.name!r}: removed abandoned {e.path}")
        was_mounted = self.fs.loop() is not None
        if not self._ready(create=False):
            return gone
        gone += super().gc(known)
        live = {int(m["subvolume"]) for _, m in self._records() if "subvolume" in m}
        mp = str(self.base)
        for qid in btrfs.qgroup_ids(mp):
            if qid != btrfs.TOP_LEVEL and qid not in live and btrfs.remove_qgroup(mp, qid):
                gone.append(f"storage {self.name!r}: removed quota group 0/{qid}")
        # Only when not even a half-made instance dir is there: a provision in another
        # process makes its subvolume before anything else.
        if not any(os.scandir(self.instances_dir)) and self.fs.unmount() and was_mounted:
            gone.append(f"storage {self.name!r}: unmounted {self.base} (no instance left)")
        return gone
