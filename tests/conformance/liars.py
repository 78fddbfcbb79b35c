"""Backends that declare what they do not do: the suite must fail them."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

from stockade.builtin.dir_storage import DirStorage
from stockade.errors import Unavailable
from stockade.features import Feature, Probe, Restriction
from stockade.interfaces import InstanceContext, QuotaBase, RootFS
from stockade.plugins import Registry, hookimpl

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "chroot_backend" / "src"))

from stockade_example_chroot.backend import ChrootIsolation


class LyingQuota(QuotaBase):
    """Declares memory and pids limits, enforces nothing."""

    name: ClassVar[str] = "lying_quota"
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.MEMORY_LIMIT, Feature.PIDS_LIMIT})

    def create(self, ctx: InstanceContext) -> None:
        return None

    def attach(self, ctx: InstanceContext, pid: int) -> None:
        return None

    def pids(self, ctx: InstanceContext) -> list[int]:
        return []

    def destroy(self, ctx: InstanceContext) -> None:
        return None


class LyingChroot(ChrootIsolation):
    """A plain chroot that claims to hide host processes and forbid mounts."""

    name: ClassVar[str] = "lying_chroot"
    restrictions: ClassVar[frozenset[Restriction]] = frozenset(
        {Restriction.HOST_PROCESSES, Restriction.MOUNT}
    )


# A missing host prerequisite: the suite must say "cannot run here" and why, never pass or fail.
MISSING_MODULE = "the frobfs kernel module is not loaded (modprobe frobfs)"
MISSING_TOOL = "mkfs.frob: not found in PATH"


class AbsentStorage(DirStorage):
    """Declares snapshots, but its probe() says a host prerequisite is missing."""

    name: ClassVar[str] = "absent_storage"

    def probe(self) -> Probe:
        return Probe.no(MISSING_MODULE)


class ToolessStorage(DirStorage):
    """Its probe() passes; building the fixture (importing the image) finds a tool missing."""

    name: ClassVar[str] = "toolless_storage"

    def import_image(self, image: str, source: Path) -> None:
        raise Unavailable(MISSING_TOOL)


class LeakyLoopStorage(DirStorage):
    """Plain-copy storage whose delete leaves a loop device attached to a file it unlinked."""

    name: ClassVar[str] = "leaky_loop_storage"
    features: ClassVar[frozenset[Feature]] = frozenset()
    _counter = itertools.count()

    def provision(self, ctx: InstanceContext) -> RootFS:
        rootfs = super().provision(ctx)
        img = self.base / f"scratch-{next(self._counter)}.img"
        with open(img, "wb") as f:
            f.truncate(1 << 20)
        subprocess.run(["losetup", "--find", "--show", str(img)], check=True, capture_output=True)
        ctx.data["leaky"] = {"img": str(img)}
        return rootfs

    def release(self, ctx: InstanceContext) -> None:
        img = ctx.data.get("leaky", {}).get("img")
        super().release(ctx)
        if img:
            Path(img).unlink()  # the loop device stays attached to the deleted file


class LeakyFileStorage(DirStorage):
    """Plain-copy storage whose delete leaves a stray file below the root (naming no instance)."""

    name: ClassVar[str] = "leaky_file_storage"
    features: ClassVar[frozenset[Feature]] = frozenset()
    _counter = itertools.count()

    def release(self, ctx: InstanceContext) -> None:
        super().release(ctx)
        (self.base / f"orphan-{next(self._counter)}").write_text("left behind\n")


class SloppyRollbackStorage(DirStorage):
    """Declares snapshots; its rollback restores every byte but not one file's mode."""

    name: ClassVar[str] = "sloppy_rollback_storage"

    def rollback(self, ctx: InstanceContext, name: str) -> None:
        super().rollback(ctx, name)
        (self._rootfs(ctx) / "etc" / "group").chmod(0o600)


class LiarsPlugin:
    @hookimpl
    def stockade_register_backends(self, registry: Registry) -> None:
        registry.add(LyingQuota)
        registry.add(LyingChroot)
        registry.add(AbsentStorage)
        registry.add(ToolessStorage)
        registry.add(LeakyLoopStorage)
        registry.add(LeakyFileStorage)
        registry.add(SloppyRollbackStorage)


class ChrootPlugin:
    @hookimpl
    def stockade_register_backends(self, registry: Registry) -> None:
        registry.add(ChrootIsolation)
