"""RctlQuota: the spec's limits as rctl rules on the jail's name.

The rule subject is the jail *name*, so rules may exist before the jail and every
process that enters the jail is covered: ``attach`` has nothing to do. I/O is
throttled per jail (all of its I/O, on any file system or device), never denied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from stockade.errors import NotFound, QuotaError, StockadeError
from stockade.features import Feature, Probe, Semantics
from stockade.interfaces import QuotaBase, QuotaStats

from ._ffi import not_freebsd_reason

# The rule builders, cffi and subprocess are imported where used: backends load with
# the plugin on every command.
if TYPE_CHECKING:
    from stockade.interfaces import BackendConfig, InstanceContext
    from stockade.spec import InstanceSpec, Resources

    from .kernel import Kernel


def _pcpu(cores: float) -> int:
    from .rctl import pcpu

    return pcpu(cores)


def stats_from_racct(racct: Mapping[str, int], resources: Resources) -> QuotaStats:
    """rctl_get_racct's counters -> QuotaStats (cputime is in seconds; I/O counters are
    decaying per-second rates, not totals, so they are not reported)."""
    return QuotaStats(
        memory_used=racct.get("memoryuse"),
        memory_limit=resources.memory,
        cpu_usage_ns=racct["cputime"] * 1_000_000_000 if "cputime" in racct else None,
        cpu_quota=_pcpu(resources.cpus) / 100 if resources.cpus is not None else None,
        pids_current=racct.get("maxproc"),
        pids_limit=resources.pids,
    )


class RctlQuota(QuotaBase):
    name: ClassVar[str] = "rctl"
    priority: ClassVar[int] = 10
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.MEMORY_LIMIT,
            Feature.CPU_QUOTA,
            Feature.PIDS_LIMIT,
            Feature.IO_RATE_LIMIT,
        }
    )
    semantics: ClassVar[Semantics] = Semantics(
        # Not per block device: rctl throttles all of the jail's I/O, counted at the file
        # system layer, so it holds for the instance's dataset (and everything else it touches).
        io_limit_on="dataset",
        memory_tolerance=0.25,
        extra={
            "io_scope": "per jail: readbps/writebps/readiops/writeiops throttle, whatever device",
            "memory": "memoryuse:deny reclaims pages (RSS) instead of failing allocations or killing",
            "cpu": "pcpu is percent of one CPU, rounded half up; offenders are throttled",
        },
    )

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._kernel: Kernel | None = None

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            from .kernel import Kernel

            self._kernel = Kernel.system()
        return self._kernel

    def _jail(self, ctx: InstanceContext) -> str:
        from .naming import jail_name

        return str(ctx.bag("quota").get("jail") or jail_name(self.config.host_tag, ctx.id))

    def probe(self) -> Probe:
        reason = not_freebsd_reason()
        if reason:
            return Probe.no(reason)
        from .kernel import racct_enabled

        ok, why = racct_enabled(self.kernel)
        return Probe.yes() if ok else Probe.no(why)

    def check(self, spec: InstanceSpec) -> list[str]:
        from .rctl import unsupported

        return unsupported(spec.resources)

    def _apply(self, jail: str, resources: Resources) -> list[str]:
        from .rctl import rules_for

        rules = [r.text() for r in rules_for(resources, jail)]
        for rule in rules:
            self.kernel.rctl_add(rule)
        return rules

    def create(self, ctx: InstanceContext) -> None:
        from .naming import jail_name
        from .rctl import jail_filter

        jail = jail_name(self.config.host_tag, ctx.id)
        bag = ctx.bag("quota")
        bag["jail"] = jail
        self.kernel.rctl_remove(jail_filter(jail))  # a previous instance's leftovers
        bag["rules"] = self._apply(jail, ctx.spec.resources)

    def attach(self, ctx: InstanceContext, pid: int) -> None:
        return None  # rules follow the jail name: entering the jail is joining

    def update(self, ctx: InstanceContext, resources: Resources) -> None:
        from .rctl import jail_filter, unsupported

        problems = unsupported(resources)
        if problems:
            raise QuotaError(f"instance {ctx.name!r}: {'; '.join(problems)}")
        jail = self._jail(ctx)
        self.kernel.rctl_remove(jail_filter(jail))
        ctx.bag("quota")["rules"] = self._apply(jail, resources)

    def stats(self, ctx: InstanceContext) -> QuotaStats:
        from .rctl import parse_racct

        try:
            racct = parse_racct(self.kernel.rctl_racct(f"jail:{self._jail(ctx)}"))
        except NotFound:
            racct = {}
        return stats_from_racct(racct, ctx.spec.resources)

    def pids(self, ctx: InstanceContext) -> list[int]:
        import subprocess

        proc = subprocess.run(
            ["ps", "-ax", "-J", self._jail(ctx), "-o", "pid="], capture_output=True, text=True, check=False
        )
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def destroy(self, ctx: InstanceContext) -> None:
        from .rctl import jail_filter

        with contextlib.suppress(NotFound):
            self.kernel.rctl_remove(jail_filter(self._jail(ctx)))
        ctx.bag("quota")["rules"] = []

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        if not_freebsd_reason():
            return []
        from .naming import jail_name, jail_prefix
        from .rctl import jail_filter, parse_rules

        prefix = f"jail:{jail_prefix(self.config.host_tag)}"
        mine = {jail_name(self.config.host_tag, c.id) for c in known.values()}
        try:
            rules = parse_rules(self.kernel.rctl_rules("jail:"))
        except StockadeError:
            return []
        gone = sorted({r.split(":")[1] for r in rules if r.startswith(prefix)} - mine)
        for jail in gone:
            self.kernel.rctl_remove(jail_filter(jail))
        return [f"rctl rules of jail {j}" for j in gone]
