"""Backends that declare what they do not do: the suite must fail them."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from stockade.builtin.dir_storage import DirStorage
from stockade.errors import Unavailable
from stockade.features import Feature, Probe, Restriction
from stockade.interfaces import InstanceContext, QuotaBase, RootFS, Spawned, Stdio
from stockade.plugins import Registry, hookimpl
from stockade_linux_ns.isolation import LinuxNsIsolation

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


class NoFirewallNs(LinuxNsIsolation):
    """linux_ns, declaring everything it does, whose bridged networks have no host firewall:
    once an instance is made, it drops the root's nftables table (what a backend that
    forgot the input and forward chains looks like)."""

    name: ClassVar[str] = "no_firewall_ns"
    priority: ClassVar[int] = 0

    def create(self, ctx: InstanceContext, stdio: Stdio, join: Any) -> Spawned:
        spawned = super().create(ctx, stdio, join)
        if ctx.spec.network.mode == "bridge":
            from stockade_linux_ns.net import firewall

            firewall.delete_table(self.config.host_tag)
        return spawned


class SharedNetnsBridgeNs(LinuxNsIsolation):
    """linux_ns whose bridged instances share the host's network namespace (a bridge mode
    that forgets to unshare it); loopback mode stays right."""

    name: ClassVar[str] = "shared_netns_bridge_ns"
    priority: ClassVar[int] = 0

    def _instance_plan(
        self,
        ctx: InstanceContext,
        stdio: Stdio,
        etc_binds: tuple[tuple[str, str], ...],
        spare: Sequence[tuple[int, int]] = (),
    ) -> Any:
        from stockade_linux_ns import syscalls

        plan = super()._instance_plan(ctx, stdio, etc_binds, spare)
        if ctx.spec.network.mode != "bridge":
            return plan
        net = syscalls.CLONE_NEWNET
        return dataclasses.replace(
            plan,
            ns_flags=plan.ns_flags & ~net,
            enter=tuple(e for e in plan.enter if e[1] != net),
            loopback_up=False,
            attach_network=False,
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
        registry.add(NoFirewallNs)
        registry.add(SharedNetnsBridgeNs)


class ChrootPlugin:
    @hookimpl
    def stockade_register_backends(self, registry: Registry) -> None:
        registry.add(ChrootIsolation)
