"""The ``cgroup`` quota backend: limits, stats, freezing and cleanup on cgroup v1, v2 or hybrid.

Which hierarchy serves each controller is detected once per backend object (detect.py);
the exact cgroup directories an instance got are stored in ``ctx.bag("quota")["groups"]``
at create, so attach, stats, freeze and destroy from any later process use those paths
and never re-detect. ``attach`` is a handful of writes to ``cgroup.procs`` (or ``tasks``).

Options (``BackendConfig.options``):
  ``cgroup_version``: "auto" (default), "v1" or "v2" (on a hybrid host, ignore the other).
  ``cgroup_v2_move_to_leaf``: True (default). When our own v2 cgroup holds processes and a
  controller must be enabled for stockade's children, move those processes into
  ``<own>/stockade-leaf`` (v2/core.py); False raises an error that says what to do instead.
  ``cgroup_timeout``: seconds to wait for a freeze, a thaw or an instance to die (10).

On v2 there is no device filtering (it needs an eBPF program); the isolation backend's
minimal /dev is what limits devices there.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

from stockade.errors import NotSupported, QuotaError, UnsupportedFeature
from stockade.features import Feature, Probe, Semantics
from stockade.interfaces import BackendConfig, InstanceContext, QuotaBase, QuotaStats
from stockade.spec import InstanceSpec, Resources

from .. import syscalls
from . import cpulist, fs, placement
from .blockdev import whole_disk
from .detect import Hierarchy, Layout, Prefer, detect
from .placement import Group
from .v1 import blkio as v1_blkio
from .v1 import cpu as v1_cpu
from .v1 import cpuacct as v1_cpuacct
from .v1 import cpuset as v1_cpuset
from .v1 import devices as v1_devices
from .v1 import freezer as v1_freezer
from .v1 import memory as v1_memory
from .v1 import pids as v1_pids
from .v2 import core as v2_core
from .v2 import cpu as v2_cpu
from .v2 import cpuset as v2_cpuset
from .v2 import freezer as v2_freezer
from .v2 import io as v2_io
from .v2 import memory as v2_memory
from .v2 import pids as v2_pids

# What each spec field needs, by v2 controller name (v1 calls io "blkio").
_V1_NAME = {"io": "blkio"}


def _needed(res: Resources) -> dict[str, str]:
    """controller -> the spec field asking for it (for messages)."""
    out: dict[str, str] = {}
    if res.memory is not None or res.memory_swap is not None or res.memory_reservation is not None:
        out["memory"] = "resources.memory"
    if res.cpus is not None or res.cpu_weight is not None:
        out["cpu"] = "resources.cpus" if res.cpus is not None else "resources.cpu_weight"
    if res.cpuset_cpus is not None or res.cpuset_mems is not None:
        out["cpuset"] = "resources.cpuset_cpus"
    if res.pids is not None:
        out["pids"] = "resources.pids"
    if res.io.any():
        out["io"] = "resources.io"
    return out


def _describe(e: OSError) -> str:
    text = e.strerror or str(e)
    if e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    return text


class CgroupQuota(QuotaBase):
    """Resource limits with cgroups; also a Freezer (freeze / thaw)."""

    name: ClassVar[str] = "cgroup"
    priority: ClassVar[int] = 100
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.MEMORY_LIMIT,
            Feature.CPU_QUOTA,
            Feature.PIDS_LIMIT,
            Feature.FREEZE,
            Feature.IO_RATE_LIMIT,
        }
    )
    semantics: ClassVar[Semantics] = Semantics(io_limit_on="block_device")

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        prefer = str(config.options.get("cgroup_version", "auto"))
        if prefer not in ("auto", "v1", "v2"):
            raise QuotaError(f"option cgroup_version: {prefer!r} is not one of auto, v1, v2")
        self._prefer: Prefer = prefer  # type: ignore[assignment]
        self._move_ok = bool(config.options.get("cgroup_v2_move_to_leaf", True))
        self._timeout = float(config.options.get("cgroup_timeout", 10.0))
        self._layout: Layout | None = None

    # --- layout ---------------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            try:
                self._layout = detect(self._prefer)
            except OSError as e:
                raise QuotaError(f"cgroup: cannot read the cgroup layout: {_describe(e)}") from e
        return self._layout

    def _hierarchy(self, controller: str) -> tuple[Literal["v1", "v2"], Hierarchy] | None:
        lay = self.layout
        h = lay.v1_for(_V1_NAME.get(controller, controller))
        if h is not None:
            return "v1", h
        if lay.unified is not None and controller in lay.unified.controllers:
            return "v2", lay.unified
        return None

    def _missing_reason(self, *controllers: str) -> str:
        lay = self.layout
        where = []
        if lay.mode != "v2":
            names = ", ".join(_V1_NAME.get(c, c) for c in controllers)
            where.append(f"no cgroup v1 hierarchy has {names}")
        if lay.unified is not None:
            have = " ".join(sorted(lay.unified.controllers)) or "none"
            where.append(f"not in {lay.unified.own_dir}/cgroup.controllers (has: {have})")
        return "; ".join(where) or "no cgroup file system is mounted"

    # --- probe and check ------------------------------------------------------------------

    def probe(self) -> Probe:
        try:
            lay = self.layout
        except QuotaError as e:
            return Probe.no(str(e))
        if not lay.hierarchies:
            return Probe.no(
                "cgroup: no cgroup file system mounted (no cgroup or cgroup2 line in /proc/self/mountinfo)"
            )
        missing = [c for c in ("memory", "cpu", "pids", "io") if self._hierarchy(c) is None]
        problems = []
        if missing:
            problems.append(
                f"controllers {', '.join(missing)} not available ({self._missing_reason(*missing)})"
            )
        if lay.v1_for("cpu") is not None and lay.v1_for("cpuacct") is None:
            problems.append("controller 'cpuacct' unavailable (cgroup v1 needs it for CPU usage)")
        if lay.v1_for("freezer") is None and lay.unified is None:
            problems.append("no freezer: no v1 'freezer' hierarchy and no cgroup2 mount")
        for h in lay.hierarchies:
            if not placement.used(h):
                continue
            base = os.path.join(h.own_dir, placement.PARENT)
            target = base if fs.exists(base) else h.own_dir
            if not fs.exists(target):
                problems.append(f"{target} (our own cgroup) does not exist")
            elif not fs.writable(target):
                problems.append(f"{target} is not writable (need root or a delegated cgroup)")
        problems += list(lay.notes)
        if problems:
            return Probe.no("cgroup: " + "; ".join(problems))
        return Probe.yes()

    def check(self, spec: InstanceSpec) -> list[str]:
        res = spec.resources
        out: list[str] = []
        for controller, field in _needed(res).items():
            if self._hierarchy(controller) is None:
                out.append(
                    f"{field}: cgroup controller {controller!r} is not available here "
                    f"({self._missing_reason(controller)})"
                )
        if res.memory_swap is not None and not self._swap_accounting():
            out.append(
                "resources.memory_swap: this kernel does not account swap per cgroup "
                "(memory.memsw.* / memory.swap.max absent; boot with swapaccount=1) - "
                "drop memory_swap"
            )
        if res.cpuset_cpus is not None or res.cpuset_mems is not None:
            out += self._check_cpuset(res)
        return out

    def _swap_accounting(self) -> bool:
        found = self._hierarchy("memory")
        if found is None:
            return True  # reported as a missing controller already
        version, h = found
        if version == "v1":
            return v1_memory.has_swap_accounting(h.own_dir)
        if h.own in ("", "/"):
            # The v2 root has no memory.* files; the kernel command line is what turns it off.
            try:
                return "swapaccount=0" not in fs.read("/proc/cmdline").split()
            except OSError:
                return True
        return v2_memory.has_swap_accounting(h.own_dir)

    def _check_cpuset(self, res: Resources) -> list[str]:
        found = self._hierarchy("cpuset")
        if found is None:
            return []
        version, h = found
        try:
            cpus, mems = (v1_cpuset.allowed if version == "v1" else v2_cpuset.allowed)(h.own_dir)
        except OSError:
            return []
        out = []
        for field, asked, have in (
            ("cpuset_cpus", res.cpuset_cpus, cpus),
            ("cpuset_mems", res.cpuset_mems, mems),
        ):
            if asked is None:
                continue
            try:
                outside = cpulist.parse(asked) - cpulist.parse(have)
            except ValueError as e:
                out.append(f"resources.{field}: {e}")
                continue
            if outside:
                what = "CPUs" if field == "cpuset_cpus" else "memory nodes"
                out.append(f"resources.{field}: {asked!r} is outside the {what} allowed here ({have})")
        return out

    # --- groups of an instance ------------------------------------------------------------

    def _planned(self, ctx: InstanceContext) -> list[Group]:
        """Where the instance's cgroups would be, from the layout (when nothing was stored)."""
        out: list[Group] = []
        for h in self.layout.hierarchies:
            if placement.used(h):
                path = placement.leaf(h, self.config.host_tag, ctx.name)
                ctrls = h.controllers if h.version == 1 else v2_core.controllers(path)
                out.append(Group(path, h.version, ctrls))
        return out

    @staticmethod
    def _stored(ctx: InstanceContext) -> list[Group]:
        return [Group.from_dict(d) for d in ctx.bag("quota").get("groups", [])]

    def _groups(self, ctx: InstanceContext) -> list[Group]:
        groups = self._stored(ctx)
        if not groups:
            raise QuotaError(
                f"instance {ctx.name!r} has no cgroups (quota create did not run or it was destroyed)"
            )
        return groups

    @staticmethod
    def _serving(groups: list[Group], controller: str) -> Group | None:
        v1_name = _V1_NAME.get(controller, controller)
        for g in groups:
            if g.version == 1 and v1_name in g.controllers:
                return g
        for g in groups:
            if g.version == 2 and controller in g.controllers:
                return g
        return None

    @contextmanager
    def _translate(self, what: str, ctx: InstanceContext) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise QuotaError(
                f"cgroup: {what} for instance {ctx.name!r}: {_describe(e)}", errno=e.errno
            ) from e

    # --- lifecycle ------------------------------------------------------------------------

    def _device(self, ctx: InstanceContext, res: Resources) -> str | None:
        if not res.io.any():
            return None
        stored = ctx.bag("quota").get("device")
        if isinstance(stored, str):
            return stored
        raw = ctx.rootfs.device if ctx.rootfs is not None else None
        if raw is None:
            raise UnsupportedFeature(
                f"resources.io: instance {ctx.name!r}: its root file system has no block device "
                "to limit I/O on (use a storage backend with one, or drop the io limits)"
            )
        try:
            return whole_disk(raw)
        except (ValueError, OSError) as e:
            raise UnsupportedFeature(f"resources.io: instance {ctx.name!r}: {e}") from e

    def create(self, ctx: InstanceContext) -> None:
        res = ctx.spec.resources
        needed = _needed(res)
        for line in [
            f"{field}: cgroup controller {c!r} is not available here ({self._missing_reason(c)})"
            for c, field in needed.items()
            if self._hierarchy(c) is None
        ]:
            raise UnsupportedFeature(line)
        device = self._device(ctx, res)
        bag = ctx.bag("quota")
        bag["device"] = device
        used = [h for h in self.layout.hierarchies if placement.used(h)]
        with self._translate("creating cgroups", ctx):
            # Checked before making anything: a name clash must not touch the other instance.
            for h in used:
                path = placement.leaf(h, self.config.host_tag, ctx.name)
                if fs.exists(path) and placement.all_pids(path):
                    raise QuotaError(
                        f"cgroup: {path} already exists with processes in it (another instance "
                        f"named {ctx.name!r}?); destroy it or run `stockade gc`"
                    )
        groups: list[Group] = []
        required_v2 = {c for c in needed if (self._hierarchy(c) or ("",))[0] == "v2"}
        try:
            with self._translate("creating cgroups", ctx):
                for h in used:
                    path = placement.leaf(h, self.config.host_tag, ctx.name)
                    if fs.exists(path):
                        # Left empty by a crashed create: start clean, not with its old limits.
                        placement.remove(path, self._timeout)
                    if h.version == 1:
                        g = placement.make_v1(h, self.config.host_tag, ctx.name)
                    else:
                        g = placement.make_v2(h, self.config.host_tag, ctx.name, required_v2, self._move_ok)
                    groups.append(g)
                    # Stored as we go, so a failed create is undone by destroy from anywhere.
                    bag["groups"] = [x.to_dict() for x in groups]
            with self._translate("applying limits", ctx):
                devices = self._serving(groups, "devices")
                if devices is not None and devices.version == 1:
                    v1_devices.apply(devices.path)
            self._apply(ctx, groups, res, device)
        except BaseException:
            # Undo what was made; the original error is the one worth reporting.
            with contextlib.suppress(Exception):
                self._teardown(ctx.name, groups)
            # Empty, not absent: a later destroy must not fall back to the planned paths,
            # which may belong to another instance of the same name.
            bag["groups"] = []
            raise

    def _apply(self, ctx: InstanceContext, groups: list[Group], res: Resources, device: str | None) -> None:
        by_version: dict[tuple[str, int], Callable[[str], None]] = {
            ("memory", 1): lambda p: v1_memory.apply(p, res),
            ("memory", 2): lambda p: v2_memory.apply(p, res),
            ("cpu", 1): lambda p: v1_cpu.apply(p, res),
            ("cpu", 2): lambda p: v2_cpu.apply(p, res),
            ("cpuset", 1): lambda p: v1_cpuset.apply(p, res),
            ("cpuset", 2): lambda p: v2_cpuset.apply(p, res),
            ("pids", 1): lambda p: v1_pids.apply(p, res),
            ("pids", 2): lambda p: v2_pids.apply(p, res),
        }
        if device is not None:
            by_version[("io", 1)] = lambda p: v1_blkio.apply(p, res.io, device)
            by_version[("io", 2)] = lambda p: v2_io.apply(p, res.io, device)
        for controller, field in _needed(res).items():
            g = self._serving(groups, controller)
            if g is None:
                raise UnsupportedFeature(
                    f"{field}: instance {ctx.name!r} has no {controller!r} "
                    "cgroup (created without it; recreate the instance)"
                )
            fn = by_version.get((controller, g.version))
            if fn is None:
                continue
            with self._translate(f"setting {field}", ctx):
                fn(g.path)

    def attach(self, ctx: InstanceContext, pid: int) -> None:
        self._attach(ctx, pid, v2=True)

    def birth_cgroup(self, ctx: InstanceContext) -> str | None:
        v2 = [d["path"] for d in ctx.bag("quota").get("groups", ()) if d.get("version") == 2]
        return v2[0] if len(v2) == 1 else None

    def attach_born(self, ctx: InstanceContext, pid: int) -> None:
        self._attach(ctx, pid, v2=False)

    def _attach(self, ctx: InstanceContext, pid: int, v2: bool) -> None:
        # Moving a whole thread group takes cgroup_threadgroup_rwsem for writing, which
        # waits for an RCU grace period (12-36 ms here, per move: more than all the rest of
        # a start). A v1 ``tasks`` write of "0" moves only the calling thread and skips that
        # lock; for a single-threaded process (a fresh fork: how spawn joins) that is the
        # whole process: 0.5 ms instead of 16 (median, measured here). v2 has no such
        # path: there the cheap way is to be born in the group (birth_cgroup).
        if pid == os.getpid() and syscalls.single_threaded():
            v1_file, what = "/tasks", "0"
        else:
            v1_file, what = "/cgroup.procs", str(pid)
        with self._translate(f"moving pid {pid} into its cgroups", ctx):
            for d in ctx.bag("quota").get("groups", ()):
                if d.get("version") != 2:
                    fs.write(d["path"] + v1_file, what)
                elif v2:
                    fs.write(d["path"] + "/cgroup.procs", what)

    def update(self, ctx: InstanceContext, resources: Resources) -> None:
        """Change limits live; fields left None keep their current value."""
        groups = self._groups(ctx)
        for c, field in _needed(resources).items():
            if self._serving(groups, c) is None:
                raise UnsupportedFeature(
                    f"{field}: instance {ctx.name!r} has no {c!r} cgroup ({self._missing_reason(c)})"
                )
        self._apply(ctx, groups, resources, self._device(ctx, resources))

    def stats(self, ctx: InstanceContext) -> QuotaStats:
        groups = self._groups(ctx)
        values: dict[str, Any] = {}
        with self._translate("reading stats", ctx):
            for controller, v1_mod, v2_mod in (
                ("memory", v1_memory, v2_memory),
                ("pids", v1_pids, v2_pids),
                ("io", v1_blkio, v2_io),
            ):
                g = self._serving(groups, controller)
                if g is not None and fs.exists(g.path):
                    values.update((v1_mod if g.version == 1 else v2_mod).stats(g.path))
            cpu = self._serving(groups, "cpu")
            if cpu is not None and fs.exists(cpu.path):
                values.update((v1_cpu if cpu.version == 1 else v2_cpu).stats(cpu.path))
            acct = self._serving(groups, "cpuacct")
            unified = next((g for g in groups if g.version == 2), None)
            if acct is not None:
                values["cpu_usage_ns"] = v1_cpuacct.usage_ns(acct.path)
            elif unified is not None:
                values["cpu_usage_ns"] = v2_cpu.usage_ns(unified.path)
        return QuotaStats(**values)

    def pids(self, ctx: InstanceContext) -> list[int]:
        groups = self._groups(ctx)
        primary = (
            self._serving(groups, "pids") or next((g for g in groups if g.version == 2), None) or groups[0]
        )
        with self._translate("listing processes", ctx):
            return sorted(set(placement.all_pids(primary.path)))

    # --- Freezer --------------------------------------------------------------------------

    def _freezer(self, ctx: InstanceContext) -> tuple[Literal[1, 2], str]:
        groups = self._groups(ctx)
        g = self._serving(groups, "freezer")
        if g is not None:
            return 1, g.path
        g = next((g for g in groups if g.version == 2), None)
        if g is not None:
            return 2, g.path
        raise NotSupported(f"instance {ctx.name!r}: no freezer (no v1 freezer hierarchy, no cgroup2 group)")

    def freeze(self, ctx: InstanceContext) -> None:
        version, path = self._freezer(ctx)
        with self._translate("freezing", ctx):
            (v1_freezer if version == 1 else v2_freezer).freeze(path, self._timeout)

    def thaw(self, ctx: InstanceContext) -> None:
        version, path = self._freezer(ctx)
        with self._translate("thawing", ctx):
            (v1_freezer if version == 1 else v2_freezer).thaw(path, self._timeout)

    # --- teardown -------------------------------------------------------------------------

    def _teardown(self, name: str, groups: list[Group]) -> list[str]:
        left = placement.kill_all(groups, self._timeout)
        if left:
            raise QuotaError(
                f"cgroup: instance {name!r}: pids {left} still alive "
                f"{self._timeout:g}s after SIGKILL (stuck in the kernel?)"
            )
        removed: list[str] = []
        for g in groups:
            removed += placement.remove(g.path, self._timeout)
        if not self.config.warm:  # else close() does, once (re-making them is ~1 ms a run)
            placement.prune(d for g in groups for d in (g.tag_dir, g.parent_dir))
        return removed

    def destroy(self, ctx: InstanceContext) -> None:
        bag = ctx.bag("quota")
        # No "groups" at all: create's bag never reached this process (killed before the
        # state was saved), so remove what create would have made.
        groups = self._stored(ctx) if "groups" in bag else self._planned(ctx)
        with self._translate("removing cgroups", ctx):
            self._teardown(ctx.name, groups)
        bag["groups"] = []

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        by_name: dict[str, list[Group]] = {}
        for h in self.layout.hierarchies:
            if not placement.used(h):
                continue
            base = placement.tag_dir(h, self.config.host_tag)
            for name in fs.children(base):
                if name not in known:
                    path = os.path.join(base, name)
                    ctrls = h.controllers if h.version == 1 else v2_core.controllers(path)
                    by_name.setdefault(name, []).append(Group(path, h.version, ctrls))
        removed: list[str] = []
        for name, groups in sorted(by_name.items()):
            try:
                removed += self._teardown(name, groups)
            except OSError as e:
                raise QuotaError(f"cgroup: gc of {name!r}: {_describe(e)}", errno=e.errno) from e
        self._prune_parents()
        return removed

    def close(self) -> None:
        if self._layout is None:  # never used: nothing made
            return
        try:
            self._prune_parents()
        except OSError as e:
            what = f"cgroup: removing this root's empty parent cgroups: {_describe(e)}"
            raise QuotaError(what, errno=e.errno) from e

    def _prune_parents(self) -> None:
        """Remove this root's stockade/<tag> (and stockade/) where they are empty."""
        placement.prune(
            d
            for h in self.layout.hierarchies
            if placement.used(h)
            for d in (
                placement.tag_dir(h, self.config.host_tag),
                os.path.join(h.own_dir, placement.PARENT),
            )
        )
