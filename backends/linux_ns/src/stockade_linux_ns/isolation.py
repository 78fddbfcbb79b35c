"""The ``linux_ns`` isolation backend: namespaces, a pivoted root, capabilities, seccomp.

What an instance gets by default is documented in docs/security.md; the moving parts
live in small modules (syscalls, caps, seccomp, rootfs, spawn). Everything a later
process needs (start, kill, destroy from another CLI invocation) is kept in
``ctx.bag("isolation")``: the PID 1 pid and start time, the start FIFO, and the files
this backend made in ``ctx.run_dir``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from stockade.errors import IsolationError, StateConflict
from stockade.features import Feature, Probe, Restriction, Semantics
from stockade.interfaces import (
    BackendConfig,
    InstanceContext,
    IsolationBase,
    JoinFn,
    Spawned,
    Stdio,
)
from stockade.spec import InstanceSpec, Process

FIFO_NAME = "start.fifo"
_ALL_RESTRICTIONS = frozenset(Restriction)


def _hosts_text(hostname: str) -> str:
    return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"


def _etc_texts(spec: InstanceSpec) -> list[tuple[str, str]]:
    """The run_dir files bind-mounted on /etc, with their first contents.

    A bridged instance's resolv.conf is made here, before the root is set up (the
    network is attached later, once PID 1 has its namespace): the bind mount needs the
    file, and the attach rewrites it in place."""
    hostname = spec.effective_hostname
    out = [("hostname", hostname + "\n"), ("hosts", _hosts_text(hostname))]
    if spec.network.mode == "bridge":
        from .net.hostsfile import render_resolv

        out.append(("resolv.conf", render_resolv(spec.network.dns)))
    return out


def _network_hooks() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    try:
        from .net import attach_instance_network, detach_instance_network
    except (ImportError, AttributeError):
        return None
    return attach_instance_network, detach_instance_network


class LinuxNsIsolation(IsolationBase):
    name: ClassVar[str] = "linux_ns"
    priority: ClassVar[int] = 100
    features: ClassVar[frozenset[Feature]] = frozenset(
        {
            Feature.FS_ISOLATION,
            Feature.NETWORK_ISOLATION,
            Feature.USER_NAMESPACE,
            Feature.TERMINAL,
            Feature.CHECKPOINT,
            Feature.LIVE_MIGRATION,
            Feature.COLD_MIGRATION,
        }
    )
    semantics: ClassVar[Semantics] = Semantics(migration="live")
    restrictions: ClassVar[frozenset[Restriction]] = _ALL_RESTRICTIONS
    relaxable: ClassVar[frozenset[Restriction]] = _ALL_RESTRICTIONS

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        from .nspool import NamespacePool

        self._pool = NamespacePool() if config.warm else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()

    def checkpointer(self) -> Any:
        """CRIU checkpoint/restore of this backend's instances (see docs/checkpoint.md)."""
        from .checkpoint import CriuCheckpointer

        return CriuCheckpointer()

    # --- discovery ---------------------------------------------------------------------

    def probe(self) -> Probe:
        if not sys.platform.startswith("linux"):
            return Probe.no(f"linux_ns needs Linux (this is {sys.platform})")
        if not _has_cap_sys_admin():
            return Probe.no("linux_ns needs root (CAP_SYS_ADMIN) to create namespaces and mounts")
        for ns in ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user"):
            if not os.path.exists(f"/proc/self/ns/{ns}"):
                return Probe.no(f"linux_ns: this kernel has no {ns} namespaces (/proc/self/ns/{ns})")
        from .seccomp import libseccomp_problem

        problem = libseccomp_problem()
        if problem:
            return Probe.no(f"linux_ns: {problem}")
        return Probe.yes()

    def check(self, spec: InstanceSpec) -> list[str]:
        out: list[str] = []
        if spec.network.mode == "bridge":
            if _network_hooks() is None:
                out.append(
                    "network mode bridge: not available (stockade_linux_ns.net has no "
                    "attach_instance_network)"
                )
            else:
                from .net import check_network_spec

                out.extend(check_network_spec(spec))
        if spec.user_namespace is not None and Restriction.HOST_PROCESSES in spec.allow:
            out.append(
                "user_namespace with allow host_processes: not supported (/proc of the "
                "host's pid namespace cannot be mounted from a user namespace)"
            )
        if spec.user_namespace is not None and not os.path.exists("/proc/self/uid_map"):
            out.append("user_namespace: this kernel has no user namespaces")
        return out

    # --- lifecycle ---------------------------------------------------------------------

    def create(self, ctx: InstanceContext, stdio: Stdio, join: JoinFn) -> Spawned:
        from . import spawn

        if ctx.rootfs is None:
            raise IsolationError(
                f"instance {ctx.name!r}: no root file system (provision storage "
                "before creating the isolation)"
            )
        bag = ctx.bag("isolation")
        if bag.get("pid") and self.is_alive(ctx):
            raise StateConflict(
                f"instance {ctx.name!r} already has a running first process (pid {bag['pid']})"
            )
        spec = ctx.spec
        hooks = _network_hooks() if spec.network.mode == "bridge" else None
        if spec.network.mode == "bridge" and hooks is None:
            raise IsolationError(f"instance {ctx.name!r}: network mode bridge: not available")

        made: list[str] = []
        run_dir = ctx.run_dir
        made_run_dir = not run_dir.exists()
        fifo_fd = -1
        attached = False
        pool = self._pool if spec.user_namespace is None else None
        spare = pool.take() if pool is not None else []
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            etc_binds = self._etc_files(ctx, made)
            fifo = run_dir / FIFO_NAME
            if fifo.exists() or fifo.is_symlink():
                fifo.unlink()
            os.mkfifo(fifo, 0o600)
            made.append(FIFO_NAME)
            fifo_fd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
            plan = self._instance_plan(ctx, stdio, etc_binds, spare)

            def attach(netns_path: str) -> None:
                nonlocal attached
                assert hooks is not None
                hooks[0](ctx, netns_path)
                attached = True

            idle = pool.refill if pool is not None else None
            pid, master = spawn.launch_instance(plan, join, fifo_fd, attach if hooks else None, idle)
        except BaseException as e:
            if attached and hooks is not None:
                with contextlib.suppress(Exception):
                    hooks[1](ctx)
            self._remove_made(run_dir, made, made_run_dir)
            if isinstance(e, spawn.SetupFailed | OSError):
                raise IsolationError(f"instance {ctx.name!r}: setup failed: {spawn.one_line(e)}") from e
            raise
        finally:
            if fifo_fd >= 0:
                os.close(fifo_fd)
            for fd, _ in spare:
                os.close(fd)

        from .procid import start_time

        bag.clear()
        bag.update(
            pid=pid,
            start_time=start_time(pid),
            fifo=str(run_dir / FIFO_NAME),
            made=made,
            made_run_dir=made_run_dir,
            network_attached=attached,
            pidns=Restriction.HOST_PROCESSES not in spec.allow,
        )
        return Spawned(pid=pid, pty_master=master)

    def start(self, ctx: InstanceContext) -> None:
        bag = ctx.bag("isolation")
        fifo = bag.get("fifo")
        if not fifo or not os.path.exists(fifo):
            raise StateConflict(f"instance {ctx.name!r} was already started (or never created)")
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            # ENXIO: nobody has the FIFO open for reading, i.e. PID 1 is gone.
            raise StateConflict(
                f"instance {ctx.name!r} is not waiting to start (its first "
                "process is gone): delete it and create it again"
            ) from e
        try:
            os.write(fd, b"1")
        finally:
            os.close(fd)
            os.unlink(fifo)

    def exec(self, ctx: InstanceContext, process: Process, stdio: Stdio, join: JoinFn) -> Spawned:
        from . import spawn
        from .procid import open_pidfd

        bag = ctx.bag("isolation")
        pidfd = open_pidfd(bag["pid"], bag["start_time"]) if bag.get("pid") else None
        if pidfd is None:
            raise StateConflict(f"instance {ctx.name!r} is not running")
        try:
            ns = spawn.open_namespaces(bag["pid"])
        finally:
            os.close(pidfd)
        try:
            plan = self._proc_plan(ctx.spec, process, stdio, create_cwd=False)
            pid, master = spawn.launch_exec(ns, plan, join)
        except (spawn.SetupFailed, OSError) as e:
            raise IsolationError(
                f"instance {ctx.name!r}: exec {process.args[0]!r} failed: {spawn.one_line(e)}"
            ) from e
        finally:
            for _, fd, _ in ns:
                os.close(fd)
        from .procid import is_same_and_alive, start_time

        # destroy() must reap these: PID 1 cannot finish dying while a zombie of its
        # namespace waits for a parent outside it (us).
        live = [e for e in bag.get("exec", []) if is_same_and_alive(e[0], e[1])]
        live.append([pid, start_time(pid)])
        bag["exec"] = live
        return Spawned(pid=pid, pty_master=master)

    def kill(self, ctx: InstanceContext, signal: int) -> None:
        import signal as _signal

        from .procid import open_pidfd

        bag = ctx.bag("isolation")
        pidfd = open_pidfd(bag["pid"], bag["start_time"]) if bag.get("pid") else None
        if pidfd is None:
            raise StateConflict(f"instance {ctx.name!r} is not running")
        try:
            _signal.pidfd_send_signal(pidfd, signal)
        except ProcessLookupError as e:
            raise StateConflict(f"instance {ctx.name!r} is not running") from e
        finally:
            os.close(pidfd)

    def is_alive(self, ctx: InstanceContext) -> bool:
        from .procid import is_same_and_alive

        bag = ctx.bag("isolation")
        pid, started = bag.get("pid"), bag.get("start_time")
        return isinstance(pid, int) and isinstance(started, int) and is_same_and_alive(pid, started)

    def destroy(self, ctx: InstanceContext) -> None:
        import select
        import signal as _signal

        from .procid import open_pidfd

        bag = ctx.bag("isolation")
        pid, started = bag.get("pid"), bag.get("start_time")
        if pid and started is not None:
            pidfd = open_pidfd(pid, started)
            if pidfd is not None:
                try:
                    # PID 1 dies last: the kernel kills its whole pid namespace first.
                    _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
                    poller = select.poll()
                    poller.register(pidfd, select.POLLIN)
                    exec_pids = [e[0] for e in bag.get("exec", [])]
                    for tick in range(3000):
                        if poller.poll(10):
                            break
                        exec_pids = [p for p in exec_pids if not _reaped(p)]
                        if tick == 100:
                            _reap_nested_zombies()
                    else:
                        raise IsolationError(
                            f"instance {ctx.name!r}: pid {pid} did not die within 30 s of SIGKILL"
                        )
                except ProcessLookupError:
                    pass
                finally:
                    os.close(pidfd)
            # Reap it if it is our child and nobody else has (its status is moot now).
            _reaped(pid)
        if bag.get("network_attached"):
            hooks = _network_hooks()
            if hooks is not None:
                hooks[1](ctx)
            bag["network_attached"] = False
        self._remove_made(ctx.run_dir, bag.get("made", []), bool(bag.get("made_run_dir")))
        bag.clear()

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        # Namespaces and mounts die with PID 1 and the Host removes run_dirs of unknown
        # instances; what is host-wide is the bridged network's: leases, links, rules.
        if not (self.config.root / "networks").exists():
            return []
        removed: list[str] = self.networks().gc({*known, *(c.id for c in known.values())})
        return removed

    def networks(self) -> Any:
        """Named bridged networks of this host root (``stockade network ...``)."""
        from .net import Networks

        return Networks(self.config)

    # --- plans -------------------------------------------------------------------------

    def _etc_files(self, ctx: InstanceContext, made: list[str]) -> tuple[tuple[str, str], ...]:
        binds: list[tuple[str, str]] = []
        for name, text in _etc_texts(ctx.spec):
            path = ctx.run_dir / name
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, text.encode())
                finally:
                    os.close(fd)
                made.append(name)
            binds.append((str(path), f"/etc/{name}"))
        resolv = ctx.run_dir / "resolv.conf"
        if resolv.exists() and str(resolv) not in (h for h, _ in binds):
            binds.append((str(resolv), "/etc/resolv.conf"))
        return tuple(binds)

    def _proc_plan(self, spec: InstanceSpec, process: Process, stdio: Stdio, create_cwd: bool) -> Any:
        from . import caps, seccomp, spawn

        return spawn.ProcPlan(
            process=process,
            cap_mask=caps.mask_of(caps.caps_for(spec.allow)),
            seccomp=seccomp.program_for(spec.allow),
            terminal=stdio.terminal,
            stdio=stdio,
            create_cwd=create_cwd,
        )

    def _instance_plan(
        self,
        ctx: InstanceContext,
        stdio: Stdio,
        etc_binds: tuple[tuple[str, str], ...],
        spare: Sequence[tuple[int, int]] = (),
    ) -> Any:
        from . import rootfs, spawn, syscalls

        spec = ctx.spec
        assert ctx.rootfs is not None
        flags = (
            syscalls.CLONE_NEWNS | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWCGROUP
        )
        if Restriction.HOST_PROCESSES not in spec.allow:
            flags |= syscalls.CLONE_NEWPID
        host_net = spec.network.mode == "host" or Restriction.FOREIGN_NETWORK in spec.allow
        if not host_net:
            flags |= syscalls.CLONE_NEWNET
        root = os.path.realpath(ctx.rootfs.path)
        return spawn.InstancePlan(
            root=rootfs.RootPlan(
                root=root,
                userns=spec.user_namespace is not None,
                sysctl_writable=Restriction.SYSCTL in spec.allow,
                readonly=spec.readonly_rootfs or ctx.rootfs.readonly,
                mounts=spec.mounts,
                etc_binds=etc_binds,
            ),
            ns_flags=flags,
            enter=tuple((fd, flag) for fd, flag in spare if flags & flag),
            userns=spec.user_namespace,
            hostname=spec.effective_hostname,
            loopback_up=not host_net and spec.network.mode in ("loopback", "bridge"),
            attach_network=not host_net and spec.network.mode == "bridge",
            proc=self._proc_plan(spec, spec.process, stdio, create_cwd=True),
        )

    @staticmethod
    def _remove_made(run_dir: Path, made: list[str], made_run_dir: bool) -> None:
        for name in made:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        if made_run_dir:
            with contextlib.suppress(OSError):
                run_dir.rmdir()


def _reaped(pid: int) -> bool:
    """Reap ``pid`` if it is our exited child; True once it is nobody's business of ours."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True


def _reap_nested_zombies() -> None:
    """Last resort when PID 1 will not finish dying: it waits for zombies of its namespace
    whose parent is outside (us). Reap our zombie children that live in a nested pid
    namespace."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if (
            fields.get("State", "").strip().startswith("Z")
            and int(fields.get("PPid", "0")) == me
            and len(fields.get("NSpid", "").split()) > 1
        ):
            _reaped(int(name))


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 21))
    except OSError:
        pass
    return os.geteuid() == 0
