"""The contracts between the Host and its backends, one small Protocol per concern.

Backend operations are methods on typed objects, not hooks: a create must reach
exactly one backend. ``BackendBase`` gives "not supported" defaults so a backend
implements only what it declares. Everything a backend needs to find its
resources again, from a fresh process, goes into ``ctx.data[<kind>]``, which the
Host persists with the instance's state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from .errors import NotSupported
from .features import Feature, Probe, Restriction, Semantics
from .spec import InstanceSpec, Process, Resources

Kind = Literal["isolation", "quota", "storage"]
KINDS: tuple[Kind, ...] = ("isolation", "quota", "storage")


@dataclass(frozen=True)
class BackendConfig:
    """What every backend instance is built with: where its host keeps things."""

    root: Path  # persistent root of this host (--root)
    run_dir: Path  # runtime state of this host (mount points, sockets)
    host_tag: str  # short stable id of the root, put in names of host-wide resources
    options: Mapping[str, Any] = field(default_factory=dict)  # backend-specific configuration
    # A long-lived host process (the supervisor): a backend may keep what all instances of
    # the root share (empty cgroup parents) from one instance to the next, until close().
    warm: bool = False


@dataclass(frozen=True)
class RootFS:
    """A provisioned root file system, mounted on the host at ``path``."""

    path: str
    device: str | None = None  # "MAJ:MIN" of the block device behind it, for I/O limits
    readonly: bool = False


@dataclass
class InstanceContext:
    """One instance as the backends see it."""

    id: str
    name: str
    spec: InstanceSpec
    config: BackendConfig
    state_dir: Path  # persistent per-instance directory
    run_dir: Path  # runtime per-instance directory
    rootfs: RootFS | None = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-kind persisted data
    # False for an instance deleted when its process ends (``run --rm``): what a backend
    # records for it need not survive a power loss (no fsync); gc removes what one leaves.
    durable: bool = True

    def bag(self, kind: Kind) -> dict[str, Any]:
        return self.data.setdefault(kind, {})


@dataclass(frozen=True)
class Stdio:
    """Where a new process's standard streams go. None inherits the caller's."""

    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    terminal: bool = False  # allocate a pty inside the instance; master comes back in Spawned


@dataclass(frozen=True)
class Spawned:
    pid: int  # host pid
    pty_master: int | None = None  # fd, when Stdio.terminal


@dataclass(frozen=True)
class QuotaStats:
    memory_used: int | None = None
    memory_limit: int | None = None
    memory_peak: int | None = None
    cpu_usage_ns: int | None = None
    cpu_quota: float | None = None  # cores
    pids_current: int | None = None
    pids_limit: int | None = None
    oom_kills: int | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


@dataclass(frozen=True)
class StorageUsage:
    used: int
    quota: int | None = None
    available: int | None = None


@dataclass(frozen=True)
class Snapshot:
    name: str
    created: float
    size: int | None = None


# The quota backend's attach: moves a process, named by its pid in the caller's pid
# namespace, into the instance's cgroups. The isolation backend runs it either in the new
# process itself (with its own pid, as seen from itself: a single-threaded fresh fork, so
# the quota backend may move just the calling thread, which is cheaper) or in the calling
# process (with the new process's host pid). Either way it completes before the new
# process unshares its cgroup namespace (so the instance's own cgroup is its cgroup root
# "/") and before any of the instance's code runs.
JoinFn = Callable[[int], None]


@dataclass(frozen=True)
class Join:
    """The JoinFn the Host hands to isolation backends, with what a quota backend offers
    beyond moving a process: ``birth_cgroup``, a cgroup v2 directory a new process can be
    cloned straight into (clone3 CLONE_INTO_CGROUP: no migration, none of its RCU wait).
    A process born there calls ``after_birth(its own pid)`` instead of the join, for the
    rest (v1 hierarchies). Isolation backends that cannot clone just call it."""

    attach: Callable[[int], None]
    birth_cgroup: str | None = None
    after_birth: Callable[[int], None] | None = None

    def __call__(self, pid: int) -> None:
        self.attach(pid)


@runtime_checkable
class Backend(Protocol):
    name: ClassVar[str]
    kind: ClassVar[Kind]
    priority: ClassVar[int]
    features: ClassVar[frozenset[Feature]]
    semantics: ClassVar[Semantics]

    def probe(self) -> Probe: ...

    def check(self, spec: InstanceSpec) -> list[str]:
        """What in this spec the backend cannot do (one line each); empty if it can do all."""
        ...

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        """Remove this host root's resources that belong to no known instance; say what went."""
        ...


@runtime_checkable
class IsolationBackend(Backend, Protocol):
    # The restrictions enforced by default, and those a spec may relax with ``allow``.
    restrictions: ClassVar[frozenset[Restriction]]
    relaxable: ClassVar[frozenset[Restriction]]

    def create(self, ctx: InstanceContext, stdio: Stdio, join: JoinFn) -> Spawned:
        """Start the instance's first process, set up and waiting before exec; return its pid."""
        ...

    def start(self, ctx: InstanceContext) -> None:
        """Let the waiting first process exec the spec's command."""
        ...

    def exec(self, ctx: InstanceContext, process: Process, stdio: Stdio, join: JoinFn) -> Spawned:
        """Run another process inside the running instance, as a child of the caller."""
        ...

    def kill(self, ctx: InstanceContext, signal: int) -> None: ...

    def is_alive(self, ctx: InstanceContext) -> bool: ...

    def destroy(self, ctx: InstanceContext) -> None:
        """Kill what is left and release isolation resources. Idempotent."""
        ...


@runtime_checkable
class QuotaBackend(Backend, Protocol):
    def create(self, ctx: InstanceContext) -> None:
        """Make the instance's resource groups with the spec's limits. Nothing runs in them yet."""
        ...

    def attach(self, ctx: InstanceContext, pid: int) -> None: ...

    def update(self, ctx: InstanceContext, resources: Resources) -> None: ...

    def stats(self, ctx: InstanceContext) -> QuotaStats: ...

    def pids(self, ctx: InstanceContext) -> list[int]:
        """Every process in the instance (host pids)."""
        ...

    def destroy(self, ctx: InstanceContext) -> None:
        """Remove the groups; kills stragglers first. Idempotent."""
        ...


@runtime_checkable
class Freezer(Protocol):
    def freeze(self, ctx: InstanceContext) -> None: ...

    def thaw(self, ctx: InstanceContext) -> None: ...


@runtime_checkable
class StorageBackend(Backend, Protocol):
    def has_image(self, image: str) -> bool: ...

    def import_image(self, image: str, source: Path) -> None:
        """Make ``image`` from a directory tree (copied; the source is left alone)."""
        ...

    def list_images(self) -> list[str]: ...

    def remove_image(self, image: str) -> None: ...

    def provision(self, ctx: InstanceContext) -> RootFS:
        """Clone the spec's image for this instance and mount it. Record what is needed in ctx."""
        ...

    def mount(self, ctx: InstanceContext) -> RootFS:
        """Mount an already provisioned root again (after a reboot). Idempotent."""
        ...

    def unmount(self, ctx: InstanceContext) -> None: ...

    def release(self, ctx: InstanceContext) -> None:
        """Unmount and delete everything provision made. Idempotent."""
        ...

    def snapshot(self, ctx: InstanceContext, name: str) -> Snapshot: ...

    def rollback(self, ctx: InstanceContext, name: str) -> None: ...

    def list_snapshots(self, ctx: InstanceContext) -> list[Snapshot]: ...

    def delete_snapshot(self, ctx: InstanceContext, name: str) -> None: ...

    def usage(self, ctx: InstanceContext) -> StorageUsage: ...


class BackendBase:
    """Optional base: defaults that say "not supported" and a do-nothing gc."""

    name: ClassVar[str] = "unnamed"
    kind: ClassVar[Kind]
    priority: ClassVar[int] = 0
    features: ClassVar[frozenset[Feature]] = frozenset()
    semantics: ClassVar[Semantics] = Semantics()
    restrictions: ClassVar[frozenset[Restriction]] = frozenset()
    relaxable: ClassVar[frozenset[Restriction]] = frozenset()

    def __init__(self, config: BackendConfig) -> None:
        self.config = config

    def probe(self) -> Probe:
        return Probe.yes()

    def check(self, spec: InstanceSpec) -> list[str]:
        return []

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        return []

    def close(self) -> None:
        """Release what a warm backend kept between instances (BackendConfig.warm)."""

    def _unsupported(self, what: str) -> NotSupported:
        return NotSupported(f"{self.kind} backend {self.name!r} does not support {what}")


class StorageBase(BackendBase):
    kind: ClassVar[Kind] = "storage"

    def snapshot(self, ctx: InstanceContext, name: str) -> Snapshot:
        raise self._unsupported("snapshots")

    def rollback(self, ctx: InstanceContext, name: str) -> None:
        raise self._unsupported("rollback")

    def list_snapshots(self, ctx: InstanceContext) -> list[Snapshot]:
        return []

    def delete_snapshot(self, ctx: InstanceContext, name: str) -> None:
        raise self._unsupported("snapshots")

    def mount(self, ctx: InstanceContext) -> RootFS:
        raise self._unsupported("re-mounting")

    def unmount(self, ctx: InstanceContext) -> None:
        return None

    def set_quota(self, ctx: InstanceContext, disk: int | None) -> None:
        """Change the root's disk quota live (None removes it); backends with DISK_QUOTA."""
        raise self._unsupported("changing the disk quota")


class QuotaBase(BackendBase):
    kind: ClassVar[Kind] = "quota"

    def birth_cgroup(self, ctx: InstanceContext) -> str | None:
        """A cgroup v2 directory new processes may be born in (see Join); None: attach only."""
        return None

    def attach_born(self, ctx: InstanceContext, pid: int) -> None:
        """Join what is left after a birth in ``birth_cgroup`` (``pid`` is the caller's own)."""
        self.attach(ctx, pid)  # type: ignore[attr-defined]

    def update(self, ctx: InstanceContext, resources: Resources) -> None:
        raise self._unsupported("live updates of limits")

    def stats(self, ctx: InstanceContext) -> QuotaStats:
        return QuotaStats()


class IsolationBase(BackendBase):
    kind: ClassVar[Kind] = "isolation"

    def exec(self, ctx: InstanceContext, process: Process, stdio: Stdio, join: JoinFn) -> Spawned:
        raise self._unsupported("exec")
