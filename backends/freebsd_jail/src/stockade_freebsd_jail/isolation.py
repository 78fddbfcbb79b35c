"""FreeBsdJailIsolation: an instance is a persistent jail, entered through a forked helper.

create: preflight -> mounts (devfs, nullfs) -> jail_set(JAIL_CREATE, persist) -> network
plan -> the first process attached and waiting on a FIFO; start: write to the FIFO;
exec: another helper; destroy: jail_remove -> unmount in reverse -> interfaces and
rctl rules removed. Everything destroy needs is in ``ctx.data["isolation"]``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, ClassVar

from stockade.errors import (
    IsolationError,
    NotFound,
    SpecError,
    StockadeError,
    UnsupportedFeature,
)
from stockade.features import Feature, Probe, Restriction, Semantics
from stockade.interfaces import IsolationBase

from ._ffi import not_freebsd_reason
from .options import parse_options
from .restrictions import ENFORCED, NOT_ENFORCED, RELAXABLE, unrelaxable

# Everything else (cffi, the iovec and plan builders, hashlib for interface names, the
# helper) is imported where it is used: backends load with the plugin on every command.
if TYPE_CHECKING:
    from stockade.interfaces import BackendConfig, InstanceContext, JoinFn, Spawned, Stdio
    from stockade.spec import InstanceSpec, Process

    from .helper import Ops
    from .kernel import Kernel
    from .network import NetworkPlan, Step

FIFO = "start.fifo"


def _step_data(steps: tuple[Step, ...]) -> list[dict[str, Any]]:
    return [asdict(s) for s in steps]


def _steps(data: list[dict[str, Any]]) -> list[Step]:
    from .network import Step

    return [Step(**{**d, "argv": tuple(d["argv"])}) for d in data]


class FreeBsdJailIsolation(IsolationBase):
    name: ClassVar[str] = "freebsd_jail"
    priority: ClassVar[int] = 10
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.FS_ISOLATION,
            Feature.NETWORK_ISOLATION,
            Feature.COLD_MIGRATION,
            Feature.DELEGATED_DATASET,
        }
    )
    semantics: ClassVar[Semantics] = Semantics(
        migration="cold",
        extra={
            "checkpoint": "unsupported: nothing on FreeBSD checkpoints processes (no CRIU)",
            "live_migration": "unsupported; cold migration restarts the instance",
            "not_enforced": "; ".join(f"{r.value}: {why}" for r, why in NOT_ENFORCED.items()),
        },
    )
    restrictions: ClassVar[frozenset[Restriction]] = ENFORCED
    relaxable: ClassVar[frozenset[Restriction]] = RELAXABLE

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.opts, self.net_opts = parse_options(config.options)
        self._kernel: Kernel | None = None

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            from .kernel import Kernel

            self._kernel = Kernel.system()
        return self._kernel

    # --- declarations -----------------------------------------------------------------------

    def probe(self) -> Probe:
        reason = not_freebsd_reason()
        if reason:
            return Probe.no(reason)
        if os.geteuid() != 0:
            return Probe.no("jail_set(2) needs root on the host")
        try:
            if self.kernel.sysctl_int("security.jail.jailed"):
                return Probe.no("this host is itself a jail (create instances from the host)")
        except StockadeError as e:
            return Probe.no(str(e))
        return Probe.yes()

    def network_plan(self, spec: InstanceSpec, instance_id: str) -> NetworkPlan:
        from .naming import jail_name
        from .network import plan_network

        return plan_network(
            spec,
            host_tag=self.config.host_tag,
            instance_id=instance_id,
            jail=jail_name(self.config.host_tag, instance_id),
            stack=self.opts.stack,
            **self.net_opts,
        )

    def check(self, spec: InstanceSpec) -> list[str]:
        out = self.opts.problems() + unrelaxable(spec.allow)
        if spec.user_namespace is not None:
            out.append("user_namespace: FreeBSD has no user namespaces")
        if spec.delegate_dataset and Restriction.MOUNT not in spec.allow:
            out.append("delegate_dataset: needs allow = ['mount'] (the jail mounts its dataset itself)")
        out += self.network_plan(spec, "check").problems
        return out

    # --- lifecycle --------------------------------------------------------------------------

    def _enter(self, jid: int) -> Any:
        kernel = self.kernel
        return lambda: kernel.jail_attach(jid)

    def _ops(self) -> Ops:
        """The helper's calls: POSIX, plus FreeBSD's setloginclass for the configured class."""
        from .helper import Ops

        def setloginclass(name: str) -> None:  # libc is opened on first use, not here
            self.kernel.setloginclass(name)

        return Ops(setloginclass=setloginclass, login_class=self.opts.login_class)

    def create(self, ctx: InstanceContext, stdio: Stdio, join: JoinFn) -> Spawned:
        from ._ffi import JAIL_CREATE
        from .helper import make_start_fifo, spawn
        from .mounts import make_mountpoint, plan_mounts
        from .naming import jail_name
        from .params import jail_params, preflight, ruleset_for
        from .zfs_delegation import STORAGE_KEY, merge_params, plan_delegation

        if ctx.rootfs is None:
            raise IsolationError(
                f"instance {ctx.name!r}: freebsd_jail needs a root file system from the storage backend"
            )
        spec = ctx.spec
        jail = jail_name(self.config.host_tag, ctx.id)
        net = self.network_plan(spec, ctx.id)
        if net.problems:
            raise UnsupportedFeature(f"instance {ctx.name!r}: {'; '.join(net.problems)}")
        ruleset = ruleset_for(self.opts, net.params)
        mplan = plan_mounts(spec, ctx.rootfs.path, str(ctx.run_dir), ruleset)
        params = jail_params(spec, name=jail, path=mplan.jail_path, network=net.params, opts=self.opts)
        dataset = ctx.data.get("storage", {}).get(STORAGE_KEY)
        delegation = plan_delegation(dataset, jail) if dataset else None
        if delegation is not None:
            if Restriction.MOUNT not in spec.allow:
                raise UnsupportedFeature(
                    f"instance {ctx.name!r}: delegating dataset {dataset!r} "
                    "needs allow = ['mount'] (the jail mounts it itself)"
                )
            params = merge_params(params, delegation.params)
        problems = preflight(params, JAIL_CREATE)
        if problems:
            raise SpecError((f"jail {jail}", p) for p in problems)

        bag = ctx.bag("isolation")
        bag.update(
            jail=jail,
            jail_path=mplan.jail_path,
            mounts=[],
            pid=None,
            jid=None,
            teardown=_step_data(net.teardown + (delegation.teardown if delegation else ())),
            interfaces=list(net.interfaces),
        )
        kernel = self.kernel
        run_dir = str(ctx.run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if spec.readonly_rootfs:
            os.makedirs(mplan.jail_path, exist_ok=True)
        for point in mplan.mountpoints:
            make_mountpoint(ctx.rootfs.path, point)
        for step in mplan.steps:
            kernel.nmount(step.params(), step.flags)
            bag["mounts"].append(step.fspath)
        if net.resolv_conf is not None:
            etc = make_mountpoint(ctx.rootfs.path, "/etc")
            with open(os.path.join(etc, "resolv.conf"), "w") as f:
                f.write(net.resolv_conf)

        from .hostcmd import run_steps

        if delegation is not None:
            run_steps(delegation.before_create)
        jid = kernel.jail_set(params, JAIL_CREATE, jail)
        bag["jid"] = jid
        enter = self._enter(jid)
        run_steps(net.host_setup)
        run_steps(net.jail_setup, enter=enter)
        if delegation is not None:
            run_steps(delegation.after_create)

        fd = make_start_fifo(os.path.join(run_dir, FIFO))
        try:
            spawned = spawn(
                enter,
                spec.process,
                stdio,
                join=join,
                start_fd=fd,
                what=f"instance {ctx.name!r} (jail {jail})",
                ops=self._ops(),
            )
        finally:
            os.close(fd)
        bag["pid"] = spawned.pid
        return spawned

    def start(self, ctx: InstanceContext) -> None:
        from .helper import signal_start

        signal_start(os.path.join(str(ctx.run_dir), FIFO), ctx.name)

    def _jid(self, ctx: InstanceContext) -> int:
        from .naming import jail_name

        jail = ctx.bag("isolation").get("jail") or jail_name(self.config.host_tag, ctx.id)
        jid = self.kernel.find(jail)
        if jid is None:
            raise NotFound(f"instance {ctx.name!r}: jail {jail!r} does not exist; create the instance again")
        return jid

    def exec(self, ctx: InstanceContext, process: Process, stdio: Stdio, join: JoinFn) -> Spawned:
        from .helper import spawn

        return spawn(
            self._enter(self._jid(ctx)),
            process,
            stdio,
            join=join,
            what=f"exec {process.args[0]!r} in instance {ctx.name!r}",
            ops=self._ops(),
        )

    def kill(self, ctx: InstanceContext, signal: int) -> None:
        import signal as _signal

        from .helper import run_in

        pid = ctx.bag("isolation").get("pid")
        if signal == _signal.SIGKILL:
            # On Linux the namespace dies with its init; a jail has no init, so SIGKILL
            # reaches every process of the jail (kill(-1) from inside sees only the jail).
            with contextlib.suppress(NotFound):
                run_in(
                    self._enter(self._jid(ctx)),
                    lambda: os.kill(-1, _signal.SIGKILL),
                    what=f"kill instance {ctx.name!r}",
                )
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal)

    def is_alive(self, ctx: InstanceContext) -> bool:
        pid = ctx.bag("isolation").get("pid")
        if not pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        jail = ctx.bag("isolation").get("jail")
        return isinstance(jail, str) and self.kernel.find(jail) is not None

    def destroy(self, ctx: InstanceContext) -> None:
        from .naming import jail_name

        bag = ctx.bag("isolation")
        jail = bag.get("jail") or jail_name(self.config.host_tag, ctx.id)
        self._teardown(jail, list(bag.get("mounts", [])), _steps(bag.get("teardown", [])))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(str(ctx.run_dir), FIFO))
        if ctx.spec.readonly_rootfs and bag.get("jail_path"):
            with contextlib.suppress(OSError):
                os.rmdir(bag["jail_path"])
        bag.update(jid=None, pid=None, mounts=[], teardown=[])

    def _teardown(self, jail: str, mounts: list[str], steps: list[Step]) -> None:
        from .hostcmd import run_steps
        from .rctl import jail_filter

        kernel = self.kernel
        jid = kernel.find(jail)
        if jid is not None:
            run_steps([s for s in steps if s.argv[:2] == ("zfs", "unjail")])
            kernel.jail_remove(jid)
        for path in reversed(mounts):
            self._unmount(path)
        run_steps([s for s in steps if s.argv[:2] != ("zfs", "unjail")])
        with contextlib.suppress(StockadeError):  # racct off or no rules: nothing to remove
            kernel.rctl_remove(jail_filter(jail))

    def _unmount(self, path: str) -> None:
        import time

        from . import errnos
        from ._ffi import MNT_FORCE

        # A removed jail's processes die asynchronously: busy mounts drain in a moment.
        deadline = time.monotonic() + 5
        while True:
            try:
                self.kernel.unmount(path)
                return
            except IsolationError as e:
                if errnos.local_errno(16) != e.errno or time.monotonic() > deadline:
                    self.kernel.unmount(path, MNT_FORCE)
                    return
                time.sleep(0.05)

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        if not_freebsd_reason():
            return []
        from .naming import jail_name

        tag = self.config.host_tag
        known_jails = {jail_name(tag, c.id) for c in known.values()}
        known_paths = [
            c.bag("isolation").get("jail_path") or (c.rootfs.path if c.rootfs else "") for c in known.values()
        ]
        said: list[str] = []
        from .hostcmd import current_mounts, host_interfaces, run_steps
        from .naming import epair_names, epair_prefix, jail_name, jail_prefix
        from .network import Step

        for info in self.kernel.list_jails(jail_prefix(tag)):
            if info.name not in known_jails:
                self._teardown(info.name, [], [])
                said.append(f"jail {info.name} (jid {info.jid})")
        roots = (str(self.config.root), str(self.config.run_dir))
        for _src, point, fstype in reversed(current_mounts()):
            if (
                fstype in ("devfs", "nullfs", "tmpfs")
                and point.startswith(roots)
                and not any(p and point.startswith(p.rstrip("/") + "/") for p in known_paths)
            ):
                self._unmount(point)
                said.append(f"{fstype} mount {point}")
        mine = {n for c in known.values() for n in epair_names(tag, c.id)}
        for ifname in sorted(host_interfaces()):
            if ifname.startswith(epair_prefix(tag)) and ifname not in mine:
                run_steps([Step(("ifconfig", ifname, "destroy"), check=False)])
                said.append(f"interface {ifname}")
        return said
