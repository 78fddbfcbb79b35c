"""ZfsStorage: instance roots as ZFS clones of image snapshots.

Layout, all under the configured parent dataset (nothing outside it is ever touched)::

    <parent>/<host_tag>                      canmount=off, mountpoint=none
    <parent>/<host_tag>/images/<image>@base  an image: a file system and its snapshot
    <parent>/<host_tag>/instances/<id>       an instance's root: a clone of an image's @base

Cloning is O(1) whatever the image's size. ``resources.disk`` becomes the clone's
``refquota`` (only the data the root references counts: its snapshots don't).
Instance roots have ``canmount=noauto`` and their mount point (``<run_dir>/rootfs``) as
the ``mountpoint`` property, so a pool import mounts nothing and :meth:`mount` after a
reboot needs nothing but the dataset's name.

Streams (for migration): :meth:`ZfsStorage.send` writes a full or incremental
``zfs send`` stream of one of an instance's snapshots to a file descriptor and
:meth:`ZfsStorage.receive` reads one into an instance's dataset. ``send_stream`` /
``receive_stream`` are the same streams behind stockade.storage_stream's ``native:zfs``
format: the root as it is now, replacing a provisioned root on the other side.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from stockade.errors import (
    AlreadyExists,
    ImageNotFound,
    NotFound,
    StateConflict,
    StorageError,
    Unavailable,
)
from stockade.features import Feature, Probe, Semantics
from stockade.interfaces import (
    BackendConfig,
    InstanceContext,
    RootFS,
    Snapshot,
    StorageBase,
    StorageUsage,
)
from stockade.spec import InstanceSpec

from . import ops
from .nvlist import NvValue

BASE_SNAPSHOT = "base"
STREAM_SNAPSHOT = "stockade-stream"  # temporary snapshots of send_stream/receive_stream
RECEIVING_SUFFIX = "-receiving"  # a root being received beside the instance's (gc removes it)
# ZFS allows [A-Za-z0-9_.:-] and space in a name component; we allow no space.
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9_.:-]+)*$")

IO_REFUSAL = (
    "resources.io: storage 'zfs' has no block device to limit I/O on (a ZFS dataset "
    "is not a block device); drop resources.io or choose the 'overlay' storage"
)


def encode_image(image: str) -> str:
    """An image name as one dataset name component ('/' is not allowed there)."""
    return image.replace("_", "_u").replace("/", "_s")


def decode_image(component: str) -> str:
    return component.replace("_s", "/").replace("_u", "_")


DELEGATED = "data"  # the delegated dataset's name below an instance's root (as iocage's)


class ZfsStorage(StorageBase):
    """Storage on ZFS: clone per instance, refquota, snapshots, send/receive."""

    name: ClassVar[str] = "zfs"
    priority: ClassVar[int] = 20
    features: ClassVar[frozenset[Feature]] = frozenset(
        {Feature.COPY_ON_WRITE, Feature.SNAPSHOT, Feature.DISK_QUOTA, Feature.DELEGATED_DATASET}
    )
    semantics: ClassVar[Semantics] = Semantics(
        quota_scope="referenced",
        io_limit_on="none",
        restore="latest_only",
        extra={
            "clone": "O(1) zfs clone of <image>@base",
            "streams": "send/receive full and incremental (lzc_send/lzc_receive)",
        },
    )

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.parent = self._parent(config.options)
        self.base = f"{self.parent}/{config.host_tag}" if self.parent else ""
        self.images_ds = f"{self.base}/images"
        self.instances_ds = f"{self.base}/instances"

    # --- configuration and probing ---------------------------------------------------------

    @staticmethod
    def _parent(options: Mapping[str, Any]) -> str | None:
        if options.get("dataset"):
            parent = str(options["dataset"]).strip("/")
        elif options.get("pool"):
            parent = "/".join(str(p).strip("/") for p in (options["pool"], options.get("parent")) if p)
        else:
            return None
        return parent if _DATASET.match(parent) else None

    def probe(self) -> Probe:
        from .libs import loadable

        why = loadable()
        if why:
            return Probe.no(why)
        if not os.path.exists("/dev/zfs"):
            return Probe.no("/dev/zfs is missing: the zfs kernel module is not loaded")
        if not self.parent:
            return Probe.no(
                "no parent dataset configured: set the zfs storage option "
                "dataset = 'pool/stockade' (or pool + parent)"
            )
        try:
            if not ops.exists(self.parent):
                return Probe.no(
                    f"parent dataset {self.parent!r} does not exist: create it with zfs create {self.parent}"
                )
        except Exception as e:  # the library loads but cannot init (no module, no access)
            return Probe.no(f"libzfs cannot be used: {e}")
        return Probe.yes()

    def check(self, spec: InstanceSpec) -> list[str]:
        return [IO_REFUSAL] if spec.resources.io.any() else []

    def _ready(self) -> None:
        if not self.parent:
            raise Unavailable(
                "zfs storage: no parent dataset configured (options.dataset, e.g. 'tank/stockade')"
            )

    def _ensure_layout(self) -> None:
        """Make <parent>/<tag>, images and instances (never the parent itself)."""
        self._ready()
        if not ops.exists(self.parent):  # type: ignore[arg-type]
            raise Unavailable(f"zfs storage: parent dataset {self.parent!r} does not exist")
        for ds in (self.base, self.images_ds, self.instances_ds):
            if not ops.exists(ds):
                with contextlib.suppress(AlreadyExists):  # made concurrently
                    ops.create(ds, {"canmount": ops.prop_index("canmount", "off"), "mountpoint": "none"})

    # --- images ----------------------------------------------------------------------------

    def _image_ds(self, image: str) -> str:
        comp = encode_image(image)
        if not _COMPONENT.match(comp.replace(":", "-")):
            raise StorageError(f"image name {image!r} cannot be a ZFS dataset name")
        return f"{self.images_ds}/{comp}"

    def has_image(self, image: str) -> bool:
        self._ready()
        return ops.exists(f"{self._image_ds(image)}@{BASE_SNAPSHOT}")

    def list_images(self) -> list[str]:
        self._ready()
        if not ops.exists(self.images_ds):
            return []
        return sorted(
            decode_image(ds.rsplit("/", 1)[1])
            for ds in ops.children(self.images_ds)
            if ops.exists(f"{ds}@{BASE_SNAPSHOT}")
        )

    def import_image(self, image: str, source: Path) -> None:
        """Copy ``source`` into a new file system and snapshot it as ``<image>@base``."""
        self._ensure_layout()
        ds = self._image_ds(image)
        if ops.exists(f"{ds}@{BASE_SNAPSHOT}"):
            raise AlreadyExists(f"image {image!r} already exists in {ds}")
        if not source.is_dir():
            raise ImageNotFound(f"cannot import image {image!r}: {source} is not a directory")
        if ops.exists(ds):  # an import that was interrupted before its snapshot
            self._destroy_tree(ds)
        mnt = self.config.run_dir / "zfs-images" / encode_image(image)
        ops.create(ds, {"canmount": ops.prop_index("canmount", "noauto"), "mountpoint": str(mnt)})
        try:
            ops.mount(ds)
            # cp -a keeps owners, modes, links, device nodes and times, on Linux and FreeBSD
            proc = subprocess.run(
                ["cp", "-a", f"{source}/.", f"{mnt}/"], capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                raise StorageError(
                    f"import image {image!r}: copying {source} failed: {proc.stderr.strip()[:200]}"
                )
            os.chmod(mnt, os.stat(source).st_mode & 0o7777)
            ops.unmount(ds)
            ops.snapshot([f"{ds}@{BASE_SNAPSHOT}"])
        except BaseException:
            self._destroy_tree(ds)
            raise
        finally:
            _rmdir_quiet(mnt)

    def remove_image(self, image: str) -> None:
        self._ready()
        ds = self._image_ds(image)
        if not ops.exists(ds):
            raise ImageNotFound(f"no image {image!r} in zfs storage ({ds})")
        try:
            self._destroy_tree(ds)
        except StateConflict as e:
            raise StateConflict(
                f"image {image!r} is still used by instances (their roots are "
                "clones of it): delete them first",
                errno=e.errno,
            ) from e

    # --- instances -------------------------------------------------------------------------

    def _instance_ds(self, ctx: InstanceContext) -> str:
        """The instance's root dataset: the one its record names, if that is one of ours."""
        self._ready()
        ds = ctx.data.get("storage", {}).get("dataset")
        if isinstance(ds, str) and ds:
            return self._ours(ds, f"instance {ctx.name}")
        if not _COMPONENT.match(ctx.id):
            raise StorageError(f"instance id {ctx.id!r} cannot be a ZFS dataset name")
        return f"{self.instances_ds}/{ctx.id}"

    def _ours(self, ds: str, who: str) -> str:
        """``ds`` if it is a root this backend may own (a child of its instances dataset);
        refuses anything else before any library call, so a stale or edited record can never
        make it mount, change or destroy a dataset outside the configured parent."""
        prefix = f"{self.instances_ds}/"
        leaf = ds[len(prefix) :] if ds.startswith(prefix) else ""
        if not _COMPONENT.match(leaf):
            raise StorageError(
                f"{who}: its record names dataset {ds!r}, which is not under "
                f"{self.instances_ds} (the configured parent {self.parent!r}); refusing to touch it"
            )
        return ds

    @staticmethod
    def _mountpoint(ctx: InstanceContext) -> Path:
        return Path(ctx.run_dir) / "rootfs"

    def provision(self, ctx: InstanceContext) -> RootFS:
        if ctx.spec.resources.io.any():
            from stockade.errors import UnsupportedFeature

            raise UnsupportedFeature(IO_REFUSAL)
        self._ensure_layout()
        image = ctx.spec.image
        origin = f"{self._image_ds(image)}@{BASE_SNAPSHOT}"
        if not ops.exists(origin):
            raise ImageNotFound(f"instance {ctx.name}: no image {image!r} in zfs storage: import it first")
        ds = f"{self.instances_ds}/{ctx.id}"
        if not _COMPONENT.match(ctx.id):
            raise StorageError(f"instance id {ctx.id!r} cannot be a ZFS dataset name")
        if ops.exists(ds):
            raise AlreadyExists(
                f"instance {ctx.name}: its root {ds} already exists (run gc if the instance is gone)"
            )
        mnt = self._mountpoint(ctx)
        props: dict[str, NvValue] = {"canmount": ops.prop_index("canmount", "noauto"), "mountpoint": str(mnt)}
        if ctx.spec.resources.disk is not None:
            props["refquota"] = ctx.spec.resources.disk
        ops.clone(ds, origin, props)
        ctx.bag("storage").update({"dataset": ds, "origin": origin, "mountpoint": str(mnt)})
        try:
            ops.mount(ds)
            if ctx.spec.delegate_dataset:
                # A child of the root, so snapshots, destroy and gc of the root reach it; never
                # mounted on the host: the isolation backend hands it over (jailed), and the
                # instance picks its mountpoint.
                data = f"{ds}/{DELEGATED}"
                ops.create(data, {"mountpoint": "none"})
                ctx.bag("storage")["jail_dataset"] = data
        except BaseException:
            self._destroy_tree(ds)
            ctx.bag("storage").clear()
            raise
        return RootFS(path=str(mnt), device=None, readonly=ctx.spec.readonly_rootfs)

    def mount(self, ctx: InstanceContext) -> RootFS:
        ds = self._instance_ds(ctx)
        if not ops.exists(ds):
            raise NotFound(f"instance {ctx.name}: its root dataset {ds} does not exist")
        ops.mount(ds)
        mnt = ctx.data.get("storage", {}).get("mountpoint") or str(self._mountpoint(ctx))
        return RootFS(path=str(mnt), device=None, readonly=ctx.spec.readonly_rootfs)

    def unmount(self, ctx: InstanceContext) -> None:
        ds = self._instance_ds(ctx)
        if ops.exists(ds):
            ops.unmount(ds)

    def release(self, ctx: InstanceContext) -> None:
        ds = self._instance_ds(ctx)
        if ops.exists(ds):
            self._destroy_tree(ds)
        _rmdir_quiet(Path(ctx.data.get("storage", {}).get("mountpoint") or self._mountpoint(ctx)))

    def usage(self, ctx: InstanceContext) -> StorageUsage:
        """``used`` is what the root references (what refquota limits), shared blocks included."""
        ds = self._existing(ctx)
        p = ops.props_int(ds, ("referenced", "refquota", "available"))
        return StorageUsage(used=p["referenced"], quota=p["refquota"] or None, available=p["available"])

    def set_quota(self, ctx: InstanceContext, disk: int | None) -> None:
        """Change the root's refquota (None removes it). Below current use: QuotaExceeded."""
        ds = self._existing(ctx)
        ops.set_props(ds, {"refquota": "none" if disk is None else str(disk)})

    def _existing(self, ctx: InstanceContext) -> str:
        ds = self._instance_ds(ctx)
        if not ops.exists(ds):
            raise NotFound(f"instance {ctx.name}: its root dataset {ds} does not exist")
        return ds

    # --- snapshots -------------------------------------------------------------------------

    @staticmethod
    def _snap_name(name: str) -> str:
        if not _COMPONENT.match(name):
            raise StorageError(
                f"snapshot name {name!r} is invalid (letters, digits, '_', '.', "
                "':', '-'; starting with a letter or digit)"
            )
        return name

    def snapshot(self, ctx: InstanceContext, name: str) -> Snapshot:
        ds = self._existing(ctx)
        full = f"{ds}@{self._snap_name(name)}"
        ops.snapshot([full])
        p = ops.props_int(full, ("creation", "used"))
        return Snapshot(name=name, created=float(p["creation"]), size=p["used"])

    def list_snapshots(self, ctx: InstanceContext) -> list[Snapshot]:
        ds = self._existing(ctx)
        return [
            Snapshot(name=s.name.split("@", 1)[1], created=float(s.creation), size=s.used)
            for s in ops.snapshots(ds)
        ]

    def rollback(self, ctx: InstanceContext, name: str) -> None:
        """Restore the root to snapshot ``name``, which must be the latest (restore=latest_only).

        An older snapshot is refused with StateConflict naming the newer ones: rolling
        back past them would destroy them, and that is for the caller to decide.
        """
        ds = self._existing(ctx)
        snaps = ops.snapshots(ds)
        names = [s.name.split("@", 1)[1] for s in snaps]
        if self._snap_name(name) not in names:
            raise NotFound(f"instance {ctx.name}: no snapshot {name!r} (has: {', '.join(names) or 'none'})")
        newer = names[names.index(name) + 1 :]
        if newer:
            raise StateConflict(
                f"instance {ctx.name}: zfs storage restores only the latest snapshot and "
                f"{', '.join(newer)} {'is' if len(newer) == 1 else 'are'} newer than {name!r}; "
                "delete them first",
                errno=errno.EEXIST,
            )
        ops.rollback_to(ds, f"{ds}@{name}", newer)

    def delete_snapshot(self, ctx: InstanceContext, name: str) -> None:
        ds = self._existing(ctx)
        full = f"{ds}@{self._snap_name(name)}"
        if not ops.exists(full):
            raise NotFound(f"instance {ctx.name}: no snapshot {name!r}")
        ops.destroy_snapshots([full])

    # --- streams (migration) ---------------------------------------------------------------

    def send(self, ctx: InstanceContext, fd: int, snapshot: str, base: str | None = None) -> None:
        """Write a ``zfs send`` stream of the instance's snapshot ``snapshot`` to ``fd``.

        Full when ``base`` is None; otherwise incremental from the instance's earlier
        snapshot ``base`` (the receiver must hold ``base`` as its latest snapshot). Blocks
        until the whole stream is written: give it a pipe or socket that someone reads
        concurrently, or a file. ``fd`` is neither closed nor rewound. The stream keeps
        compressed blocks compressed and needs a receiving pool with the large_blocks and
        embedded_data features (every pool of OpenZFS >= 0.8).
        """
        ds = self._existing(ctx)
        snap = f"{ds}@{self._snap_name(snapshot)}"
        frm = f"{ds}@{self._snap_name(base)}" if base else None
        ops.send(snap, frm, fd)

    def send_size(self, ctx: InstanceContext, snapshot: str, base: str | None = None) -> int:
        """Estimated bytes :meth:`send` would write (for progress reporting)."""
        ds = self._existing(ctx)
        frm = f"{ds}@{self._snap_name(base)}" if base else None
        return ops.send_space(f"{ds}@{self._snap_name(snapshot)}", frm)

    def receive(
        self, ctx: InstanceContext, fd: int, snapshot: str, base: str | None = None, force: bool = False
    ) -> Snapshot:
        """Read a stream from ``fd`` into this instance's root, as its snapshot ``snapshot``.

        A full stream (``base`` None) creates the root, which must not exist yet (the
        instance is not provisioned on this host): it becomes an independent file system,
        not a clone of a local image, with ``canmount=noauto``, this instance's mount point
        and ``refquota`` from the spec; it is left unmounted (call :meth:`mount`). An
        incremental stream needs the root's latest snapshot to be ``base``; the root is
        unmounted while it is received and mounted again after if it was. ``force`` rolls
        back changes made to the root since ``base`` (otherwise they make it fail with
        StateConflict). The stream's snapshot name is replaced by ``snapshot``.
        """
        self._ensure_layout()
        ds = f"{self.instances_ds}/{ctx.id}"
        if not _COMPONENT.match(ctx.id):
            raise StorageError(f"instance id {ctx.id!r} cannot be a ZFS dataset name")
        target = f"{ds}@{self._snap_name(snapshot)}"
        mnt = self._mountpoint(ctx)
        if base is None:
            if ops.exists(ds):
                raise AlreadyExists(
                    f"instance {ctx.name}: root {ds} exists; a full stream "
                    "needs a new root (release it or send incrementally)"
                )
            props: dict[str, NvValue] = {
                "canmount": ops.prop_index("canmount", "noauto"),
                "mountpoint": str(mnt),
            }
            if ctx.spec.resources.disk is not None:
                props["refquota"] = ctx.spec.resources.disk
            try:
                ops.receive(target, fd, props, incremental=False)
            except BaseException:
                if ops.exists(ds):
                    self._destroy_tree(ds)
                raise
            ctx.bag("storage").update({"dataset": ds, "origin": None, "mountpoint": str(mnt)})
        else:
            if not ops.exists(f"{ds}@{self._snap_name(base)}"):
                raise NotFound(f"instance {ctx.name}: an incremental stream needs snapshot {base!r} on {ds}")
            was_mounted = ops.is_mounted(ds)
            if was_mounted:
                ops.unmount(ds)
            try:
                ops.receive(target, fd, None, incremental=True, force=force)
            finally:
                if was_mounted:
                    ops.mount(ds)
        p = ops.props_int(target, ("creation", "used"))
        return Snapshot(name=snapshot, created=float(p["creation"]), size=p["used"])

    # The StorageStreamer part (stockade.storage_stream): a migration's "native:zfs" format.

    def send_stream(self, ctx: InstanceContext, out: IO[bytes]) -> None:
        """Write a full stream of the root as it is now to ``out`` (a temporary snapshot,
        destroyed after)."""
        ds = self._existing(ctx)
        snap = f"{STREAM_SNAPSHOT}-{time.time_ns()}"
        ops.snapshot([f"{ds}@{snap}"])
        try:
            out.flush()
            ops.send(f"{ds}@{snap}", None, out.fileno())
        finally:
            ops.destroy_snapshots([f"{ds}@{snap}"])

    def receive_stream(self, ctx: InstanceContext, inp: IO[bytes]) -> None:
        """Replace the provisioned root of ``ctx`` with a full stream read from ``inp``.

        The stream is received beside the root first; only when it is complete is the old
        root destroyed and the new one renamed into its place (and mounted if the old one
        was), so a failed transfer leaves the instance as it was.
        """
        ds = self._existing(ctx)
        tmp = f"{ds}{RECEIVING_SUFFIX}"
        snap = f"{STREAM_SNAPSHOT}-{time.time_ns()}"
        if ops.exists(tmp):
            self._destroy_tree(tmp)
        props: dict[str, NvValue] = {
            "canmount": ops.prop_index("canmount", "noauto"),
            "mountpoint": str(ctx.data.get("storage", {}).get("mountpoint") or self._mountpoint(ctx)),
        }
        if ctx.spec.resources.disk is not None:
            props["refquota"] = ctx.spec.resources.disk
        try:
            ops.receive(f"{tmp}@{snap}", inp.fileno(), props, incremental=False)
        except BaseException:
            if ops.exists(tmp):
                self._destroy_tree(tmp)
            raise
        was_mounted = ops.is_mounted(ds)
        self._destroy_tree(ds)
        ops.rename(tmp, ds)
        ops.destroy_snapshots([f"{ds}@{snap}"])
        ctx.bag("storage")["origin"] = None
        if was_mounted:
            ops.mount(ds)

    # --- gc and teardown -------------------------------------------------------------------

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        """Destroy instance roots of this host root that no known instance owns, and images
        whose import was interrupted (no @base)."""
        if not self.parent or not ops.exists(self.base):
            return []
        keep = {c.id for c in known.values()} | set(known)
        keep |= {str(c.data.get("storage", {}).get("dataset", "")).rsplit("/", 1)[-1] for c in known.values()}
        removed: list[str] = []
        if ops.exists(self.instances_ds):
            for ds in ops.children(self.instances_ds):
                if ds.rsplit("/", 1)[1] not in keep:
                    self._destroy_tree(ds)
                    removed.append(f"zfs dataset {ds}")
        if ops.exists(self.images_ds):
            for ds in ops.children(self.images_ds):
                if not ops.exists(f"{ds}@{BASE_SNAPSHOT}"):
                    self._destroy_tree(ds)
                    removed.append(f"zfs dataset {ds} (interrupted image import)")
        return removed

    def _destroy_tree(self, ds: str) -> None:
        """Unmount, destroy the snapshots, destroy the file system, its children (a delegated
        dataset) first. Retries a busy unmount.

        Only ever below this host root's own dataset (``<parent>/<host tag>/``)."""
        if not ds.startswith(f"{self.base}/") or "@" in ds:
            raise StorageError(f"refusing to destroy {ds!r}: not below {self.base}")
        kids: list[str] = []
        with contextlib.suppress(NotFound):
            kids = ops.children(ds)
        for child in kids:
            self._destroy_tree(child)
        for attempt in range(5):
            try:
                ops.unmount(ds)
                break
            except StateConflict:
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        ops.destroy_snapshots(s.name for s in ops.snapshots(ds))
        with contextlib.suppress(NotFound):
            ops.destroy(ds)


def _rmdir_quiet(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()
