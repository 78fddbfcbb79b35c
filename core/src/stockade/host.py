"""Host: composes one isolation, one quota and one storage backend and runs the lifecycle.

    spec ─validate─▶ storage.provision ─▶ quota.create ─▶ isolation.create ─▶ start

Quota groups are made before the first process exists so that process joins them
before it unshares its cgroup namespace (its cgroup root is then the instance's own
group) and never runs unlimited. Every step pushes an undo; a failure at any step
unwinds all of them, and the state file says "creating" until the end so that
``gc`` can finish the unwinding after a kill -9.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

from . import paths
from .errors import (
    ImageNotFound,
    NotSupported,
    SpecError,
    StateConflict,
    StockadeError,
    Unavailable,
    UnsupportedFeature,
)
from .features import Feature, Probe
from .interfaces import (
    KINDS,
    Backend,
    BackendConfig,
    Freezer,
    InstanceContext,
    IsolationBackend,
    Join,
    Kind,
    QuotaBackend,
    QuotaStats,
    RootFS,
    Snapshot,
    Spawned,
    Stdio,
    StorageBackend,
    StorageUsage,
)
from .limits import IO_LIMITS, QUOTA_LIMITS
from .plugins import PluginManager, default_manager
from .spec import InstanceSpec, Process, Resources
from .state import LIVE, InstanceState, StateStore, pid_alive, proc_start_time, wait_exit

DEFAULT_ROOT = Path(paths.DEFAULT_ROOT)
DEFAULT_RUN_DIR = Path(paths.DEFAULT_RUN_DIR)


def host_tag(root: Path) -> str:
    """A short stable id of a host root, put in the names of host-wide resources."""
    return hashlib.sha256(str(root).encode()).hexdigest()[:8]


def shell_status(wait_status: int) -> int:
    """waitpid status -> what a shell reports: the exit code, or 128 + signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _fault(step: str) -> None:
    """Test hook: STOCKADE_FAULT=<step>[:kill] fails (or SIGKILLs the process) after a step."""
    want = os.environ.get("STOCKADE_FAULT")
    if not want:
        return
    name, _, how = want.partition(":")
    if name == step:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise StockadeError(f"injected fault after step {step!r} (STOCKADE_FAULT)")


@dataclass(frozen=True)
class BackendInfo:
    kind: Kind
    name: str
    plugin: str
    priority: int
    probe: Probe
    features: frozenset[Feature]


@dataclass(frozen=True)
class Stats:
    name: str
    status: str
    quota: QuotaStats
    storage: StorageUsage | None


@dataclass(frozen=True)
class ExecResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


ROOT_CONFIG = "config.toml"


def load_root_config(root: Path) -> dict[str, Any]:
    """``<root>/config.toml``: what every Host of this root (API, CLI, supervisor) starts from.

    ``[backends]`` names the default backend per kind; ``[options.<backend>]`` holds that
    backend's options (e.g. ``[options.zfs] dataset = "tank/stockade"``, ``[options.overlay]
    quota_fs = "btrfs"``). Arguments given to Host override both. No file: nothing to read
    (one failed open on the way; TOML is parsed only when the file exists).
    """
    try:
        f = open(root / ROOT_CONFIG, "rb")  # noqa: SIM115 - closed below; no import when absent
    except FileNotFoundError:
        return {}
    import tomllib

    with f:
        try:
            conf = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise StockadeError(f"{root / ROOT_CONFIG}: not valid TOML: {e}", errno=errno.EINVAL) from e
    problems = [k for k in conf if k not in ("backends", "options")]
    backends, options = conf.get("backends", {}), conf.get("options", {})
    if not isinstance(backends, dict) or any(
        k not in KINDS or not isinstance(v, str) for k, v in backends.items()
    ):
        problems.append('backends (a table of kind = "name", kinds: ' + ", ".join(KINDS) + ")")
    if not isinstance(options, dict) or any(not isinstance(v, dict) for v in options.values()):
        problems.append("options (a table of [options.<backend>] tables)")
    if problems:
        raise StockadeError(
            f"{root / ROOT_CONFIG}: invalid or unknown: {'; '.join(problems)}", errno=errno.EINVAL
        )
    return conf


def _removed_limits(old: Resources, new: Resources) -> list[str]:
    """The quota limits ``old`` has and ``new`` drops (the disk quota is the storage's)."""
    gone = [f for f in QUOTA_LIMITS if getattr(old, f) is not None and getattr(new, f) is None]
    return gone + [
        f"io.{f}" for f in IO_LIMITS if getattr(old.io, f) is not None and getattr(new.io, f) is None
    ]


class Host:
    """A host root: where instances, images and runtime state live.

    ``with Host(root=...) as host: inst = host.create(spec); inst.start(); inst.wait()``
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        isolation: str | None = None,
        quota: str | None = None,
        storage: str | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        plugins: PluginManager | None = None,
        warm: bool = False,
    ) -> None:
        """``warm``: this object lives long and runs many instances (the supervisor);
        backends may keep per-root structures between them, released by ``close()``."""
        self.root = Path(paths.root_of(root))
        self.warm = warm
        self.run_dir = Path(os.path.abspath(run_dir) if run_dir else paths.run_dir_of(str(self.root)))
        self.tag = host_tag(self.root)
        self.plugins = plugins or default_manager()
        conf = load_root_config(self.root)
        chosen = conf.get("backends", {})
        self.defaults: dict[Kind, str | None] = {
            "isolation": isolation or chosen.get("isolation"),
            "quota": quota or chosen.get("quota"),
            "storage": storage or chosen.get("storage"),
        }
        self.options = {k: dict(v) for k, v in conf.get("options", {}).items()}
        for backend, opts in (options or {}).items():  # the caller's options win, key by key
            self.options[backend] = {**self.options.get(backend, {}), **opts}
        self.store = StateStore(self.root, self.run_dir)
        self._backends: dict[tuple[Kind, str], Backend] = {}
        self._probes: dict[tuple[Kind, str], Probe] = {}

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        errors: list[Exception] = []
        for b in backends:
            close = getattr(b, "close", None)  # optional: a third party's may not have it
            try:
                if close is not None:
                    close()
            except Exception as e:  # the others still release theirs
                errors.append(e)
        if errors:
            raise errors[0]

    # --- backends ---------------------------------------------------------------------------

    def config(self, name: str) -> BackendConfig:
        return BackendConfig(
            root=self.root,
            run_dir=self.run_dir,
            host_tag=self.tag,
            options=self.options.get(name, {}),
            warm=self.warm,
        )

    def backend(self, kind: Kind, name: str) -> Backend:
        key = (kind, name)
        if key not in self._backends:
            self._backends[key] = self.plugins.make(kind, name, self.config(name))
        return self._backends[key]

    def probe(self, kind: Kind, name: str) -> Probe:
        key = (kind, name)
        if key not in self._probes:
            try:
                self._probes[key] = self.backend(kind, name).probe()
            except Exception as e:  # a broken plugin must not take the others down
                self._probes[key] = Probe.no(f"probe failed: {e}")
        return self._probes[key]

    def choose(self, kind: Kind, requested: str | None = None) -> Backend:
        """The named backend (it must be able to run here), or the best one that can."""
        name = requested or self.defaults.get(kind)
        if name:
            p = self.probe(kind, name)
            if not p.ok:
                raise Unavailable(f"{kind} backend {name!r} cannot run here: {p.reason}")
            return self.backend(kind, name)
        reasons = []
        for reg in self.plugins.registry.of_kind(kind):
            p = self.probe(kind, reg.name)
            if p.ok:
                return self.backend(kind, reg.name)
            reasons.append(f"{reg.name}: {p.reason}")
        raise Unavailable(f"no {kind} backend can run here ({'; '.join(reasons) or 'none installed'})")

    def backends(self) -> list[BackendInfo]:
        out = []
        for reg in self.plugins.registry:
            out.append(
                BackendInfo(
                    reg.kind,
                    reg.name,
                    reg.plugin,
                    reg.priority,
                    self.probe(reg.kind, reg.name),
                    frozenset(getattr(reg.factory, "features", frozenset())),
                )
            )
        return out

    def networks(self, isolation: str | None = None) -> Any:
        """The named networks of the isolation backend (create, list, inspect, delete, gc)."""
        iso = self.choose("isolation", isolation)
        make = getattr(iso, "networks", None)
        if make is None:
            raise NotSupported(f"isolation backend {iso.name!r} has no named networks")
        return make()

    # --- images -----------------------------------------------------------------------------

    def images(self, storage: str | None = None) -> list[str]:
        return cast(StorageBackend, self.choose("storage", storage)).list_images()

    def import_image(self, name: str, source: str | os.PathLike[str], storage: str | None = None) -> None:
        st = cast(StorageBackend, self.choose("storage", storage))
        with self.store.lock(f".image-{name}"):
            st.import_image(name, Path(source))

    def _ensure_image(self, storage: StorageBackend, image: str) -> None:
        if storage.has_image(image):
            return
        from .images import DEFAULT_IMAGE, build_default_image

        if image != DEFAULT_IMAGE:
            have = ", ".join(storage.list_images()) or "none"
            raise ImageNotFound(
                f"image {image!r} not found in storage {storage.name!r} (images: {have}); "
                f"import one with: stockade image import {image} DIR"
            )
        with self.store.lock(f".image-{image}"):
            if storage.has_image(image):
                return
            import shutil

            tmp = self.root / "tmp" / f"image-{secrets.token_hex(4)}"
            try:
                build_default_image(tmp)
                storage.import_image(image, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    # --- spec -------------------------------------------------------------------------------

    def make_spec(self, spec: InstanceSpec | Mapping[str, Any]) -> InstanceSpec:
        if isinstance(spec, InstanceSpec):
            return spec
        d = dict(spec)
        self.plugins.hook.stockade_prepare_spec(spec=d)
        return InstanceSpec.from_dict(d)

    def _check_features(
        self, spec: InstanceSpec, iso: IsolationBackend, quota: QuotaBackend, storage: StorageBackend
    ) -> None:
        problems: list[str] = []

        def need(feature: Feature, b: Backend, what: str) -> None:
            if feature not in b.features:
                problems.append(f"{what}: {b.kind} backend {b.name!r} does not support it")

        r = spec.resources
        if r.memory is not None or r.memory_swap is not None or r.memory_reservation is not None:
            need(Feature.MEMORY_LIMIT, quota, "memory limit")
        if r.cpus is not None or r.cpu_weight is not None or r.cpuset_cpus or r.cpuset_mems:
            need(Feature.CPU_QUOTA, quota, "cpu limits")
        if r.pids is not None:
            need(Feature.PIDS_LIMIT, quota, "pids limit")
        if r.disk is not None:
            need(Feature.DISK_QUOTA, storage, "disk quota")
        if r.io.any():
            need(Feature.IO_RATE_LIMIT, quota, "io rate limits")
            if storage.semantics.io_limit_on != "block_device":
                problems.append(f"io rate limits: storage {storage.name!r} has no block device")
        if spec.user_namespace is not None:
            need(Feature.USER_NAMESPACE, iso, "user namespace")
        if spec.process.terminal:
            need(Feature.TERMINAL, iso, "terminal")
        if spec.delegate_dataset:
            need(Feature.DELEGATED_DATASET, storage, "delegate_dataset")
            need(Feature.DELEGATED_DATASET, iso, "delegate_dataset")
        if spec.network.mode in ("none", "loopback", "bridge"):
            need(Feature.NETWORK_ISOLATION, iso, f"network mode {spec.network.mode!r}")
        for r_ in sorted(spec.allow - iso.relaxable):
            problems.append(f"allow {r_.value!r}: isolation backend {iso.name!r} cannot relax it")
        for b in (iso, quota, storage):
            problems.extend(b.check(spec))
        if problems:
            raise UnsupportedFeature("; ".join(problems))

    # --- instances --------------------------------------------------------------------------

    def _ctx(self, st: InstanceState, spec: InstanceSpec | None = None) -> InstanceContext:
        spec = spec or InstanceSpec.from_dict(st.spec)
        return InstanceContext(
            id=st.id,
            name=st.name,
            spec=spec,
            config=self.config(st.backends.get("isolation", "")),
            state_dir=self.store.dir(st.name),
            run_dir=self.store.run_dir_of(st.name),
            rootfs=RootFS(**st.rootfs) if st.rootfs else None,
            data=st.data,
        )

    def _parts(self, st: InstanceState) -> tuple[IsolationBackend, QuotaBackend, StorageBackend]:
        return (
            cast(IsolationBackend, self.backend("isolation", st.backends["isolation"])),
            cast(QuotaBackend, self.backend("quota", st.backends["quota"])),
            cast(StorageBackend, self.backend("storage", st.backends["storage"])),
        )

    def _plan(
        self, spec: InstanceSpec, backends: Mapping[str, str | None], owner: str
    ) -> tuple[IsolationBackend, QuotaBackend, StorageBackend, InstanceState]:
        """Everything decided before a new instance touches the host (create, restore): the
        backends, the spec checked against them, the image, the first state to reserve."""
        iso = cast(IsolationBackend, self.choose("isolation", backends.get("isolation")))
        quota = cast(QuotaBackend, self.choose("quota", backends.get("quota")))
        storage = cast(StorageBackend, self.choose("storage", backends.get("storage")))
        self._check_features(spec, iso, quota, storage)
        self.store.ensure()
        self._ensure_image(storage, spec.image)
        st = InstanceState(
            name=spec.name,
            id=secrets.token_hex(6),
            spec=spec.to_dict(),
            backends={"isolation": iso.name, "quota": quota.name, "storage": storage.name},
            owner=f"{owner}:{os.getpid()}",
        )
        return iso, quota, storage, st

    def create(
        self,
        spec: InstanceSpec | Mapping[str, Any],
        *,
        stdio: Stdio | None = None,
        owner: str = "api",
        ephemeral: bool = False,
        start: bool = False,
    ) -> Instance:
        """Create an instance: storage, limits and isolation in place, its process waiting.

        ``ephemeral``: it is deleted when its process ends (``run --rm``), so its record
        need not survive a power loss (no fsync); gc removes what such a loss leaves.
        ``start``: start it too (``run``), as ``create`` then ``Instance.start`` would."""
        spec = self.make_spec(spec)
        b = spec.backends
        iso, quota, storage, st = self._plan(
            spec, {"isolation": b.isolation, "quota": b.quota, "storage": b.storage}, owner
        )
        with self.store.lock(spec.name):
            self.store.reserve(st)
            ctx = self._ctx(st, spec)
            ctx.durable = not ephemeral
            undo: list[Callable[[], None]] = [lambda: self.store.remove(spec.name)]
            try:
                ctx.run_dir.mkdir(parents=True, exist_ok=True)
                _fault("reserve")
                undo.append(lambda: storage.release(ctx))
                ctx.rootfs = storage.provision(ctx)
                st.rootfs = asdict(ctx.rootfs)
                # No save between the steps: a create killed here is finished by gc from
                # the reserved state alone (each backend finds what it made for this
                # instance id and name without its bag), and each save is ~0.3 ms of `run`.
                _fault("storage")
                undo.append(lambda: quota.destroy(ctx))
                quota.create(ctx)
                _fault("quota")
                undo.append(lambda: iso.destroy(ctx))
                spawned = iso.create(ctx, stdio or Stdio(), _join(quota, ctx))
                st.pid, st.pid_start = spawned.pid, proc_start_time(spawned.pid)
                st.status = "created"
                _fault("isolation")
                # Released at once, before the state is written: that write, a second lock
                # and the hooks then overlap the process's own start (~2 ms of `run`).
                # Not where a plugin wants to see the instance created and not yet started.
                started = start and not self.plugins.hook.stockade_instance_created.get_hookimpls()
                if started:
                    iso.start(ctx)
                    st.status, st.started_at = "running", time.time()
                self.store.save(st, durable=not ephemeral)
            except BaseException as e:
                _unwind(undo, e)
                raise
        inst = Instance(self, st, spec)
        inst.pty_master = spawned.pty_master
        self.plugins.hook.stockade_instance_created(instance=inst)
        if started:
            self.plugins.hook.stockade_instance_started(instance=inst)
        elif start:
            try:
                inst.start()
            except BaseException:
                with contextlib.suppress(StockadeError):
                    inst.delete(force=True)
                raise
        return inst

    def get(self, name: str) -> Instance:
        st = self.store.load(name)
        if st.status == "deleting":
            # Being deleted now (the supervisor removes a `run --rm` instance after its
            # exit status went out) or interrupted: wait for the deleter, then look again.
            with self.store.lock(name, shared=True):
                st = self.store.load(name)
        inst = Instance(self, st)
        inst.refresh()
        return inst

    def instances(self) -> list[Instance]:
        out = []
        for name in self.store.names():
            with contextlib.suppress(StockadeError):
                out.append(self.get(name))
        return out

    def run(
        self, spec: InstanceSpec | Mapping[str, Any], *, stdio: Stdio | None = None, remove: bool = True
    ) -> int:
        """create + start + wait (+ delete): the exit status of the instance's process."""
        inst = self.create(spec, stdio=stdio, ephemeral=remove, start=True)
        try:
            return inst.wait()
        finally:
            if remove:
                inst.delete(force=True)

    def restore(self, directory: str | os.PathLike[str], *, name: str | None = None) -> Instance:
        """Restore a checkpoint (``Instance.checkpoint``) as a running instance of this host."""
        from .checkpointing import restore

        return restore(self, directory, name=name)

    def gc(self) -> list[str]:
        """Finish interrupted commands and remove this root's resources no instance owns."""
        removed: list[str] = []
        known: dict[str, InstanceContext] = {}
        for name in self.store.names():
            with self.store.lock(name):
                try:
                    st = self.store.load(name)
                except StockadeError:
                    self.store.remove(name)
                    removed.append(f"instance {name} (no readable state)")
                    continue
                ctx = self._ctx(st)
                if st.status in ("creating", "deleting"):
                    self._teardown(st, ctx)
                    removed.append(f"instance {name} (interrupted while {st.status})")
                else:
                    known[name] = ctx
        for kind in KINDS:
            for reg in self.plugins.registry.of_kind(kind):
                if self.probe(kind, reg.name).ok:
                    removed.extend(self.backend(kind, reg.name).gc(known))
        removed.extend(f"lock file of {name}" for name in self.store.prune_locks())
        return removed

    def delete_exited(self, name: str, pid: int, status: int, *, marked: Callable[[], None]) -> None:
        """Record that ``pid``, the first process of ``name``, exited with ``status`` and
        delete the instance, under one lock (a supervisor's end of ``run --rm``); ``marked``
        runs once the state says "deleting". Left alone if another process of it runs now."""
        with self.store.lock(name):
            st = self.store.load(name)
            if st.status in LIVE and st.pid != pid:
                return
            inst = Instance(self, st)
            if st.status in LIVE:  # else someone who looked first recorded the exit already
                st.status, st.exit_status, st.finished_at, st.pid = "stopped", status, time.time(), None
                self.plugins.hook.stockade_instance_stopped(instance=inst, exit_status=status)
            self._teardown(st, inst.context(), marked)  # saves it once, as "deleting"
        self.plugins.hook.stockade_instance_deleted(name=name)

    def _teardown(
        self, st: InstanceState, ctx: InstanceContext, marked: Callable[[], None] | None = None
    ) -> None:
        """Release everything an instance holds; errors are collected, not swallowed.
        ``marked`` runs once the state says "deleting" (under the caller's lock)."""
        iso, quota, storage = self._parts(st)
        if st.status != "deleting":
            st.status = "deleting"
            self.store.save(st)
        if marked is not None:
            marked()
        errors: list[BaseException] = []
        steps: list[Callable[[], None]] = [
            lambda: iso.destroy(ctx),
            lambda: quota.destroy(ctx),
            lambda: storage.release(ctx),
        ]
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        if errors:
            raise StockadeError(
                f"could not fully delete {st.name!r} ({errors[0]}); the state is kept: "
                "run stockade gc to retry"
            ) from errors[0]
        self.store.remove(st.name)


def _unwind(undo: Sequence[Callable[[], None]], cause: BaseException) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as e:  # keep unwinding; the first error is what the user sees
            cause.add_note(f"while undoing: {e}")


class Instance:
    """A handle on one instance of a Host. Cheap; reads state from disk on refresh()."""

    def __init__(self, host: Host, st: InstanceState, spec: InstanceSpec | None = None) -> None:
        self.host = host
        self._st = st
        self._spec = spec
        self.pty_master: int | None = None

    def __repr__(self) -> str:
        return f"<Instance {self.name} {self.status}>"

    # --- attributes -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._st.name

    @property
    def id(self) -> str:
        return self._st.id

    @property
    def status(self) -> str:
        return self._st.status

    @property
    def pid(self) -> int | None:
        return self._st.pid if self._st.status in LIVE else None

    @property
    def exit_status(self) -> int | None:
        return self._st.exit_status

    @property
    def state(self) -> InstanceState:
        return self._st

    @property
    def spec(self) -> InstanceSpec:
        if self._spec is None:
            self._spec = InstanceSpec.from_dict(self._st.spec)
        return self._spec

    @property
    def backends(self) -> dict[str, str]:
        return dict(self._st.backends)

    def context(self) -> InstanceContext:
        return self.host._ctx(self._st, self.spec)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[InstanceState]:
        with self.host.store.lock(self.name):
            self._st = self.host.store.load(self.name)
            self._reconcile()
            yield self._st

    def _owned_here(self) -> bool:
        return self._st.owner.rpartition(":")[2] == str(os.getpid())

    def _owner_alive(self) -> bool:
        pid = self._st.owner.rpartition(":")[2]
        return pid.isdigit() and (int(pid) == os.getpid() or pid_alive(int(pid), None))

    def _reconcile(self) -> None:
        """Under the lock: notice a first process that is gone and record it if we can."""
        st = self._st
        if st.status not in LIVE or pid_alive(st.pid, st.pid_start):
            return
        status: int | None = None
        if self._owned_here() and st.pid:
            with contextlib.suppress(ChildProcessError):
                pid, ws = os.waitpid(st.pid, os.WNOHANG)
                if pid:
                    status = shell_status(ws)
        if status is not None or not self._owner_alive():
            self._record_exit(status)
        else:
            st.status = "stopped"  # shown now; the owner (supervisor) records the status

    def _record_exit(self, status: int | None) -> None:
        st = self._st
        was_live = st.status in LIVE
        st.status, st.exit_status, st.finished_at = "stopped", status, time.time()
        st.pid = None
        self.host.store.save(st)
        if was_live:
            self.host.plugins.hook.stockade_instance_stopped(instance=self, exit_status=status)

    def refresh(self) -> Instance:
        st = self.host.store.load(self.name)
        self._st = st
        if st.status in LIVE and not pid_alive(st.pid, st.pid_start):
            with self._locked():
                pass
        return self

    # --- lifecycle --------------------------------------------------------------------------

    def start(self, *, stdio: Stdio | None = None) -> None:
        iso, _quota, _ = self.host._parts(self._st)
        with self._locked() as st:
            if st.status in ("running", "paused"):
                raise StateConflict(f"instance {self.name!r} is already {st.status}")
            if st.status == "stopped":
                self._respawn(stdio)
            elif st.status != "created":
                raise StateConflict(f"instance {self.name!r} is {st.status}; it cannot be started")
            iso.start(self.context())
            st.status, st.started_at, st.exit_status, st.finished_at = "running", time.time(), None, None
            self.host.store.save(st)
        self.host.plugins.hook.stockade_instance_started(instance=self)

    def _respawn(self, stdio: Stdio | None) -> None:
        """Start a stopped instance again: a new first process on the same storage and groups."""
        st = self._st
        iso, quota, storage = self.host._parts(st)
        ctx = self.context()
        iso.destroy(ctx)
        if ctx.rootfs is None:
            ctx.rootfs = storage.mount(ctx)
        spawned = iso.create(ctx, stdio or Stdio(), _join(quota, ctx))
        st.pid, st.pid_start, st.owner = spawned.pid, proc_start_time(spawned.pid), f"api:{os.getpid()}"
        st.status = "created"
        self.pty_master = spawned.pty_master

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the first process to end; its exit status (128+N for signal N).

        Raises TimeoutError after ``timeout`` seconds. Returns -1 if the status is unknown
        (the process belonged to a process that is gone).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        st = self._st
        if st.status in LIVE and st.pid:
            if self._owned_here():
                try:
                    ws: int | None = _waitpid(st.pid, deadline)
                except ChildProcessError:  # already reaped (and recorded) by a refresh
                    ws = None
                with self._locked_no_reconcile() as cur:
                    if cur.status in LIVE and ws is not None:
                        self._record_exit(shell_status(ws))
            else:
                _wait_gone(st.pid, st.pid_start, deadline)
                while True:  # give the owner a moment to record the exit status
                    self.refresh()
                    if self._st.exit_status is not None or not self._owner_alive():
                        break
                    if self._st.status not in LIVE and self._st.finished_at is not None:
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"instance {self.name!r} did not stop in time")
                    time.sleep(0.01)
        self.refresh()
        return -1 if self._st.exit_status is None else self._st.exit_status

    @contextlib.contextmanager
    def _locked_no_reconcile(self) -> Iterator[InstanceState]:
        with self.host.store.lock(self.name):
            self._st = self.host.store.load(self.name)
            yield self._st

    def kill(self, sig: int = signal.SIGTERM) -> None:
        iso, _, _ = self.host._parts(self._st)
        with self._locked() as st:
            if st.status not in LIVE:
                raise StateConflict(f"instance {self.name!r} is not running ({st.status})")
            iso.kill(self.context(), sig)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` (default: the spec's stop_timeout)."""
        self.refresh()
        if self._st.status not in LIVE:
            return -1 if self._st.exit_status is None else self._st.exit_status
        if self._st.status == "paused":
            self.resume()
        t = self.spec.stop_timeout if timeout is None else timeout
        with contextlib.suppress(StateConflict):
            self.kill(signal.SIGTERM)
        try:
            return self.wait(timeout=t)
        except TimeoutError:
            with contextlib.suppress(StateConflict):
                self.kill(signal.SIGKILL)
            return self.wait(timeout=30)

    def delete(self, force: bool = False) -> None:
        st = self.refresh()._st
        if st.status in LIVE:
            if not force:
                raise StateConflict(
                    f"instance {self.name!r} is {st.status}: stop it first "
                    f"(stockade stop {self.name}) or use delete -f"
                )
            if st.status == "paused":
                with contextlib.suppress(StockadeError):
                    self.resume()
            with contextlib.suppress(StateConflict):
                self.kill(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                self.wait(timeout=30)
        with self._locked() as st:
            if st.status in LIVE:
                raise StateConflict(f"instance {self.name!r} is still {st.status}")
            self.host._teardown(st, self.context())
        self.host.plugins.hook.stockade_instance_deleted(name=self.name)

    def _freezer(self) -> tuple[Freezer, InstanceContext]:
        iso, quota, _ = self.host._parts(self._st)
        for b in (iso, quota):
            if isinstance(b, Freezer) and Feature.FREEZE in b.features:
                return b, self.context()
        raise NotSupported(f"neither {iso.name!r} nor {quota.name!r} can freeze an instance")

    def pause(self) -> None:
        with self._locked() as st:
            if st.status != "running":
                raise StateConflict(f"instance {self.name!r} is {st.status}, not running")
            fr, ctx = self._freezer()
            fr.freeze(ctx)
            st.status = "paused"
            self.host.store.save(st)

    def resume(self) -> None:
        with self._locked() as st:
            if st.status != "paused":
                raise StateConflict(f"instance {self.name!r} is {st.status}, not paused")
            fr, ctx = self._freezer()
            fr.thaw(ctx)
            st.status = "running"
            self.host.store.save(st)

    # --- processes inside -------------------------------------------------------------------

    def _process(
        self,
        args: Sequence[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        user: tuple[int, int] | None,
        terminal: bool,
    ) -> Process:
        base = self.spec.process
        p = replace(base, args=tuple(args), terminal=terminal)
        if env:
            p = replace(p, env={**base.env, **env})
        if cwd:
            p = replace(p, cwd=cwd)
        if user:
            p = replace(p, uid=user[0], gid=user[1], additional_gids=())
        return p

    def spawn(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: tuple[int, int] | None = None,
        stdio: Stdio | None = None,
    ) -> Spawned:
        """Start a process inside the running instance, as a child of this process."""
        self.refresh()
        if self._st.status != "running":
            raise StateConflict(f"instance {self.name!r} is {self._st.status}, not running")
        iso, quota, _ = self.host._parts(self._st)
        ctx = self.context()
        stdio = stdio or Stdio()
        return iso.exec(
            ctx,
            self._process(args, env, cwd, user, stdio.terminal),
            stdio,
            _join(quota, ctx),
        )

    def exec(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        user: tuple[int, int] | None = None,
        stdio: Stdio | None = None,
    ) -> int:
        """Run a process inside and wait for it: its exit status."""
        sp = self.spawn(args, env=env, cwd=cwd, user=user, stdio=stdio)
        return shell_status(_waitpid(sp.pid, None))

    def run(
        self,
        args: Sequence[str],
        *,
        input: bytes = b"",
        timeout: float | None = 60,
        env: Mapping[str, str] | None = None,
        user: tuple[int, int] | None = None,
    ) -> ExecResult:
        """Run a process inside with its output captured (for scripts and tests)."""
        import selectors

        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        try:
            sp = self.spawn(args, env=env, user=user, stdio=Stdio(r_in, w_out, w_err))
        finally:
            for fd in (r_in, w_out, w_err):
                os.close(fd)
        out, err = bytearray(), bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        with contextlib.suppress(BrokenPipeError):
            os.write(w_in, input)
        os.close(w_in)
        sel = selectors.DefaultSelector()
        sel.register(r_out, selectors.EVENT_READ, out)
        sel.register(r_err, selectors.EVENT_READ, err)
        try:
            while sel.get_map():
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = sel.select(left)
                if not events:
                    os.kill(sp.pid, signal.SIGKILL)
                    raise TimeoutError(f"{list(args)!r} in {self.name!r} did not finish in {timeout}s")
                for key, _ in events:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        key.data.extend(chunk)
                    else:
                        sel.unregister(key.fd)
        finally:
            sel.close()
            os.close(r_out)
            os.close(r_err)
        return ExecResult(shell_status(_waitpid(sp.pid, None)), bytes(out), bytes(err))

    # --- resources and storage --------------------------------------------------------------

    def stats(self) -> Stats:
        self.refresh()
        _, quota, storage = self.host._parts(self._st)
        ctx = self.context()
        usage = None
        with contextlib.suppress(NotSupported):
            usage = storage.usage(ctx)
        return Stats(self.name, self.status, quota.stats(ctx), usage)

    def update(self, resources: Mapping[str, Any]) -> None:
        """Change limits live (a partial ``resources`` table, validated like a spec)."""
        with self._locked() as st:
            from .spec import merge

            new = InstanceSpec.from_dict(merge(st.spec, {"resources": dict(resources)}))
            _, quota, storage = self.host._parts(st)
            ctx = self.context()
            old = ctx.spec.resources
            disk_changes = "disk" in resources and new.resources.disk != old.disk
            # refused up front, as at create: nothing is changed by a refused update
            set_quota = getattr(storage, "set_quota", None)
            if disk_changes and Feature.DISK_QUOTA not in storage.features:
                raise UnsupportedFeature(f"disk quota: storage backend {storage.name!r} does not support it")
            if disk_changes and set_quota is None:
                raise UnsupportedFeature(f"disk quota: storage backend {storage.name!r} cannot change it")
            if new.resources.io.any() and storage.semantics.io_limit_on != "block_device":
                raise UnsupportedFeature(f"io rate limits: storage {storage.name!r} has no block device")
            removed = _removed_limits(old, new.resources)
            if removed:
                # A quota backend keeps what it is not given: the record would say "no
                # limit" while the kernel still enforces the old one.
                raise SpecError(
                    [
                        (
                            f"resources.{f}",
                            "a limit cannot be removed from a live instance; set a larger value",
                        )
                        for f in removed
                    ]
                )
            ctx.spec = new
            if disk_changes and set_quota is not None:
                set_quota(ctx, new.resources.disk)
            try:
                quota.update(ctx, new.resources)
            except BaseException:
                if disk_changes and set_quota is not None:
                    with contextlib.suppress(StockadeError):
                        set_quota(ctx, old.disk)
                raise
            st.spec = new.to_dict()
            self._spec = new
            self.host.store.save(st)

    def snapshot(self, name: str) -> Snapshot:
        from .spec import NAME_RE

        if not NAME_RE.match(name):
            raise StockadeError(
                f"snapshot name {name!r} is not valid (letters, digits, '_', '.', '-')", errno=errno.EINVAL
            )
        with self._locked() as st:
            _, _, storage = self.host._parts(st)
            frozen = False
            if st.status == "running":
                # a consistent snapshot: nothing writes while the upper layer is copied
                with contextlib.suppress(NotSupported):
                    fr, ctx = self._freezer()
                    fr.freeze(ctx)
                    frozen = True
            try:
                return storage.snapshot(self.context(), name)
            finally:
                if frozen:
                    fr.thaw(ctx)

    def rollback(self, name: str) -> None:
        with self._locked() as st:
            if st.status in LIVE:
                raise StateConflict(f"instance {self.name!r} is {st.status}: stop it before a rollback")
            _, _, storage = self.host._parts(st)
            storage.rollback(self.context(), name)

    def snapshots(self) -> list[Snapshot]:
        _, _, storage = self.host._parts(self._st)
        return storage.list_snapshots(self.context())

    def delete_snapshot(self, name: str) -> None:
        with self._locked() as st:
            _, _, storage = self.host._parts(st)
            storage.delete_snapshot(self.context(), name)

    # --- checkpoint and migration -------------------------------------------------------------

    def checkpoint(self, directory: str | os.PathLike[str], *, leave_running: bool = False) -> Any:
        """Checkpoint processes and root file system to ``directory`` (CheckpointReport)."""
        from .checkpointing import checkpoint

        return checkpoint(self, directory, leave_running=leave_running)

    def checkpoint_problems(self, live: bool = False) -> list[str]:
        """Why this instance cannot be checkpointed (or live-migrated); empty if it can."""
        from .checkpointing import preflight

        return preflight(self, live=live)

    def migrate(self, target: str, *, mode: Literal["live", "cold"] = "live", progress: bool = False) -> Any:
        """Move the instance to another host (``ssh://``, ``unix:``, ``tcp:``); MigrationReport."""
        from . import migrate as m

        chan, _ = m.open_target(target)
        try:
            return m.migrate(self, chan, mode=mode, progress=progress)
        finally:
            chan.close()

    @property
    def log_path(self) -> Path:
        return self.host.store.log_path(self.name)


def _waitpid(pid: int, deadline: float | None) -> int:
    if deadline is None:
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
    while True:
        got, ws = os.waitpid(pid, os.WNOHANG)
        if got:
            return ws
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not exit in time")
        _poll_pid(pid, max(0.0, deadline - time.monotonic()))


def _poll_pid(pid: int, timeout: float) -> None:
    wait_exit(pid, min(timeout, 0.5))


def _wait_gone(pid: int, start: int | None, deadline: float | None) -> None:
    while pid_alive(pid, start):
        left = 0.5 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"process {pid} did not exit in time")
        _poll_pid(pid, left)
        if pid_alive(pid, start):
            time.sleep(0.005)  # pidfd signals at exit; a zombie may linger until reaped


def _join(quota: QuotaBackend, ctx: InstanceContext) -> Join:
    """The join for one new process of ``ctx``; a quota backend without birth_cgroup
    (the optional QuotaBase method) only attaches."""
    birth = getattr(quota, "birth_cgroup", None)
    where = birth(ctx) if birth is not None else None
    if where is None:
        return Join(lambda pid: quota.attach(ctx, pid))
    return Join(lambda pid: quota.attach(ctx, pid), where, lambda pid: quota.attach_born(ctx, pid))  # type: ignore[attr-defined]
