"""Backends that declare what they do not do: the suite must fail them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from stockade.features import Feature, Restriction
from stockade.interfaces import InstanceContext, QuotaBase
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


class LiarsPlugin:
    @hookimpl
    def stockade_register_backends(self, registry: Registry) -> None:
        registry.add(LyingQuota)
        registry.add(LyingChroot)


class ChrootPlugin:
    @hookimpl
    def stockade_register_backends(self, registry: Registry) -> None:
        registry.add(ChrootIsolation)
