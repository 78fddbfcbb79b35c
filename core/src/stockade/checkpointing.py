"""Checkpoint a running instance to a directory and restore it, here or on another host.

A checkpoint directory holds::

    stockade.json           what the instance was: name, spec, backends, storage format
    images/                 the isolation backend's process images (CRIU's, on Linux)
    rootfs.<format>.tar     its root file system (see storage_stream)

Restore re-creates what the process images do not carry — storage, quota groups,
network, host-side mounts — exactly like ``Host.create`` (every step pushes an undo),
then has the isolation backend restore the processes into them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from . import storage_stream
from .errors import NotSupported, StateConflict, StockadeError, Unavailable
from .features import Feature
from .interfaces import InstanceContext, IsolationBackend, JoinFn, Spawned, Stdio, StorageBackend
from .state import proc_start_time

if TYPE_CHECKING:
    from .host import Host, Instance

MANIFEST = "stockade.json"
IMAGES = "images"
FORMAT_VERSION = 1


@runtime_checkable
class LazyPagesDaemon(Protocol):
    """The target's side of post-copy: serves the restored tree's missing pages until all are in."""

    def wait_ready(self, timeout: float = 30) -> None:
        """Until a restore can connect to it (it starts in the background); raises if it failed."""
        ...

    def wait(self, timeout: float | None = None) -> None:
        """Until every page has arrived; raises if it failed, TimeoutError if still going."""
        ...

    def done(self) -> bool: ...

    def kill(self) -> None: ...


@runtime_checkable
class Checkpointer(Protocol):
    """Optional part of an isolation backend (returned by its ``checkpointer()``)."""

    name: str

    def available(self) -> str: ...

    def capabilities(self) -> dict[str, bool]: ...

    def version(self) -> str: ...

    def preflight(self, ctx: InstanceContext, *, live: bool = False) -> list[str]: ...

    def checkpoint(
        self,
        ctx: InstanceContext,
        images: Path,
        *,
        leave_running: bool = False,
        leave_stopped: bool = False,
        lazy_ps_fd: int | None = None,
        parent: str | None = None,
        on_images: Callable[[], None] | None = None,
        on_freeze: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Dump into ``images``. ``lazy_ps_fd`` (post-copy): memory is served on that connected
        socket after ``on_images`` and the call returns once the peer has all of it.
        ``parent`` (pre-copy): the last pre-dump, relative to ``images``. ``on_freeze``: called
        when the instance is about to be frozen (the downtime starts there)."""
        ...

    def pre_dump(self, ctx: InstanceContext, images: Path, *, parent: str | None = None) -> dict[str, Any]:
        """Pre-copy: the memory, written while the instance runs (needs ``capabilities()['precopy']``)."""
        ...

    def lazy_pages(self, images: Path, ps_fd: int) -> LazyPagesDaemon:
        """Post-copy target: start the page daemon that ``restore(..., lazy=True)`` connects to."""
        ...

    def restore(
        self,
        ctx: InstanceContext,
        images: Path,
        join: JoinFn,
        *,
        stdout_path: Path | None = None,
        lazy: bool = False,
        leave_stopped: bool = False,
    ) -> Spawned: ...


def checkpointer_of(iso: IsolationBackend) -> Checkpointer:
    if Feature.CHECKPOINT not in iso.features and not hasattr(iso, "checkpointer"):
        raise NotSupported(f"isolation backend {iso.name!r} cannot checkpoint instances")
    get = getattr(iso, "checkpointer", None)
    if get is None:
        raise NotSupported(f"isolation backend {iso.name!r} declares checkpoint but has no checkpointer()")
    cp = get()
    why = cp.available()
    if why:
        raise Unavailable(why)
    return cast(Checkpointer, cp)


@dataclass
class CheckpointReport:
    directory: str
    freeze_s: float
    total_s: float
    images_bytes: int
    pages_bytes: int
    storage_bytes: int
    storage_format: str
    left_running: bool
    timings: dict[str, float] = field(default_factory=dict)


def preflight(inst: Instance, *, live: bool = False) -> list[str]:
    """Why ``inst`` cannot be checkpointed now (empty: it can), checked before anything freezes."""
    iso, _, _ = inst.host._parts(inst.state)
    try:
        cp = checkpointer_of(iso)
    except (NotSupported, Unavailable) as e:
        return [str(e)]
    inst.refresh()
    if inst.status != "running":
        return [f"instance {inst.name!r} is {inst.status}; only a running instance can be checkpointed"]
    return cp.preflight(inst.context(), live=live)


def manifest_of(inst: Instance, storage_format: str, checkpointer: Checkpointer) -> dict[str, Any]:
    st = inst.state
    return {
        "stockade_checkpoint": FORMAT_VERSION,
        "name": st.name,
        "id": st.id,
        "spec": st.spec,
        "backends": st.backends,
        "storage_format": storage_format,
        "checkpointer": checkpointer.name,
        "checkpointer_version": checkpointer.version(),
        "created": time.time(),
        # where it was on its network: a restore gets the same addresses (and MAC) where
        # they are free, so that its TCP connections carry on
        "network": {k: v for k, v in st.data.get("network", {}).items() if k in ("ipv4", "ipv6", "mac")},
    }


def unlock_network(cp: Checkpointer, ctx: InstanceContext) -> None:
    """Before a tree a dump left stopped resumes in place (not on a copy): undo what the
    checkpointer locked for the copy to take over (CRIU: the network namespace, locked until
    the restore elsewhere). For checkpointers that have such a step (``unlock_network``)."""
    unlock = getattr(cp, "unlock_network", None)
    if unlock is not None:
        unlock(ctx)


def _resume_stopped(pids: list[int]) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


def checkpoint(
    inst: Instance, directory: str | os.PathLike[str], *, leave_running: bool = False
) -> CheckpointReport:
    """Checkpoint ``inst`` (processes + root file system) into ``directory``.

    Without ``leave_running`` the instance stops (its processes end with the dump); with it,
    it continues after a pause as long as the dump and the file system copy.
    """
    host = inst.host
    t0 = time.monotonic()
    d = Path(directory).absolute()
    d.mkdir(parents=True, exist_ok=True)
    if any(d.iterdir()):
        raise StateConflict(f"checkpoint directory {d} is not empty: give a new or empty one")
    iso, quota, storage = host._parts(inst.state)
    cp = checkpointer_of(iso)
    fmt = storage_stream.formats_for(storage)[0]
    with host.store.lock(inst.name):
        inst.refresh()
        problems = preflight(inst)
        if problems:
            raise StateConflict(f"instance {inst.name!r} cannot be checkpointed: {'; '.join(problems)}")
        ctx = inst.context()
        pids = quota.pids(ctx)
        # Stopped (not killed) after the dump, so the file system copy matches the images.
        # Left running: stopped (not resumed) until the file system copy is done, so it
        # matches the images. Not left running: criu kills the tree while the network is
        # still locked (peers see no reset), and nothing writes the file system after.
        r = cp.checkpoint(ctx, d / IMAGES, leave_running=leave_running, leave_stopped=leave_running)
        t_dump = time.monotonic()
        try:
            with (
                storage_stream.sender(storage, ctx, fmt) as src,
                open(d / f"rootfs.{_fname(fmt)}.tar", "wb") as out,
            ):
                nbytes = storage_stream.copy(src, out)
            (d / MANIFEST).write_text(json.dumps(manifest_of(inst, fmt, cp), indent=1))
        finally:
            if leave_running:
                try:
                    unlock_network(cp, ctx)
                finally:
                    _resume_stopped(pids)
    if not leave_running:
        with contextlib.suppress(TimeoutError):
            inst.wait(timeout=10)
    t1 = time.monotonic()
    return CheckpointReport(
        str(d),
        r["freeze_s"] + (t1 - t_dump if not leave_running else time.monotonic() - t_dump),
        t1 - t0,
        r["images_bytes"],
        r["pages_bytes"],
        nbytes,
        fmt,
        leave_running,
        {"dump_s": r["freeze_s"], "storage_s": t1 - t_dump},
    )


def _fname(fmt: str) -> str:
    return fmt.replace(":", "-")


def load_manifest(directory: Path) -> dict[str, Any]:
    try:
        m = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        raise StockadeError(f"{directory} is not a stockade checkpoint (no {MANIFEST})") from None
    except ValueError as e:
        raise StockadeError(f"{directory}/{MANIFEST} is unreadable: {e}") from e
    if m.get("stockade_checkpoint") != FORMAT_VERSION:
        raise StockadeError(
            f"{directory}: checkpoint format {m.get('stockade_checkpoint')!r} is not "
            f"{FORMAT_VERSION}; restore it with the stockade that made it"
        )
    return cast(dict[str, Any], m)


StorageFill = Callable[[StorageBackend, InstanceContext], int]


def restore(
    host: Host,
    directory: str | os.PathLike[str],
    *,
    name: str | None = None,
    fill_storage: StorageFill | None = None,
    manifest: Mapping[str, Any] | None = None,
    lazy: bool = False,
    leave_stopped: bool = False,
    boot: bool = False,
    start_cold: bool = True,
    before_restore: Callable[[], None] | None = None,
) -> Instance:
    """Restore the checkpoint in ``directory`` as a new running instance (named ``name``).

    ``fill_storage`` (for migration) writes the root file system instead of the directory's
    ``rootfs.*.tar``; ``manifest`` replaces the directory's stockade.json. ``boot`` starts
    the spec's command afresh on the moved file system instead (cold migration).
    ``before_restore`` runs when all but the processes is ready (post-copy: waits for the
    lazy-pages daemon, which started in the background).
    """
    from .host import Instance, _unwind

    d = Path(directory).absolute()
    m = dict(manifest) if manifest is not None else load_manifest(d)
    spec_d = dict(m["spec"])
    spec_d["name"] = name or m["name"]
    spec = host.make_spec(spec_d)
    iso, quota, storage, st = host._plan(spec, m["backends"], "api")
    cp = None if boot else checkpointer_of(iso)
    fmt = str(m["storage_format"])
    if fill_storage is None and fmt not in storage_stream.formats_for(storage):
        raise StockadeError(
            f"{d}: its file system is in format {fmt!r}, which storage {storage.name!r} cannot take"
        )
    with host.store.lock(spec.name):
        host.store.reserve(st)
        ctx = host._ctx(st, spec)
        if m.get("network") and not boot:
            ctx.data["network_wanted"] = dict(m["network"])
        undo: list[Callable[[], None]] = [lambda: host.store.remove(spec.name)]
        try:
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            undo.append(lambda: storage.release(ctx))
            ctx.rootfs = storage.provision(ctx)
            st.rootfs = asdict(ctx.rootfs)
            host.store.save(st)
            if fill_storage is not None:
                fill_storage(storage, ctx)
            else:
                with (
                    open(d / f"rootfs.{_fname(fmt)}.tar", "rb") as src,
                    storage_stream.receiver(storage, ctx, fmt) as dst,
                ):
                    storage_stream.copy(src, dst)
            st.rootfs = asdict(ctx.rootfs)
            undo.append(lambda: quota.destroy(ctx))
            quota.create(ctx)
            host.store.save(st)
            undo.append(lambda: iso.destroy(ctx))
            log = host.store.log_path(spec.name)
            join: JoinFn = lambda pid: quota.attach(ctx, pid)  # noqa: E731
            if cp is None:
                log.parent.mkdir(parents=True, exist_ok=True)
                out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
                nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    spawned = iso.create(ctx, Stdio(nul, out, out), join)
                finally:
                    os.close(out)
                    os.close(nul)
                if start_cold:
                    iso.start(ctx)
            else:
                if before_restore is not None:
                    before_restore()
                spawned = cp.restore(
                    ctx, d / IMAGES, join, stdout_path=log, lazy=lazy, leave_stopped=leave_stopped
                )
            st.pid, st.pid_start = spawned.pid, proc_start_time(spawned.pid)
            if cp is None and not start_cold:
                st.status = "created"
            else:
                st.status, st.started_at = "running", time.time()
            host.store.save(st)
            inst = Instance(host, st, spec)
        except BaseException as e:
            _unwind(undo, e)
            raise
    host.plugins.hook.stockade_instance_created(instance=inst)
    if inst.status == "running":
        host.plugins.hook.stockade_instance_started(instance=inst)
    return inst


def boot_start(inst: Instance) -> None:
    """Start an instance that a cold migration created (its command runs afresh)."""
    inst.start()
