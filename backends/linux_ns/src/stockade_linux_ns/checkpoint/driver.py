"""Checkpoint and restore of a linux_ns instance with CRIU (swrk RPC).

Dump: the instance's whole tree from PID 1, frozen through its freezer cgroup, with
established TCP, external unix peers and file locks; its network namespace is *external*
(stockade re-creates the network on restore, CRIU restores the sockets into it); bind
mounts of host files and host stdio are named external and handed back at restore.
Restore: into a freshly provisioned root (``root``), the new instance's quota groups
(the criu child joins them before it forks the tree), a new network namespace, and as a
sibling of criu, i.e. a child of the caller (who is a subreaper and records the exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.errors import IsolationError, StateConflict
from stockade.interfaces import InstanceContext, JoinFn, Spawned

from . import criu, inventory, pb

MANIFEST = "stockade-criu.json"
LOG_DUMP = "dump.log"
LOG_RESTORE = "restore.log"
LOG_PRE_DUMP = "pre-dump.log"
LOG_LAZY = "lazy-pages.log"
LOG_LEVEL = int(os.environ.get("STOCKADE_CRIU_LOG_LEVEL", "2"))  # 4: criu's debug log
NETNS_KEY = "stk-netns"


@dataclass(frozen=True)
class DumpResult:
    freeze_s: float  # from criu's freeze (its pre-dump notification) to its answer
    pages_bytes: int
    images_bytes: int


def _pid1(ctx: InstanceContext) -> int:
    from ..procid import is_same_and_alive

    bag = ctx.bag("isolation")
    pid, started = bag.get("pid"), bag.get("start_time")
    if not pid or started is None or not is_same_and_alive(pid, started):
        raise StateConflict(
            f"instance {ctx.name!r} is not running; only a running instance can be checkpointed"
        )
    return int(pid)


def _freezer_path(ctx: InstanceContext) -> str | None:
    for g in ctx.data.get("quota", {}).get("groups", []):
        if "freezer" in g.get("controllers", []) or (g.get("version") == 2 and g.get("controllers")):
            return str(g["path"])
    return None


def preflight(
    ctx: InstanceContext, *, live: bool = False, inv: inventory.Inventory | None = None
) -> list[str]:
    """Everything that would make a checkpoint of ``ctx`` fail, one line each, before freezing.
    ``inv``: the tree's inventory if the caller has just taken it (it is ~7 ms a time)."""
    problems: list[str] = []
    why = criu.probe_reason()
    if why:
        return [why]
    try:
        pid = _pid1(ctx)
    except StateConflict as e:
        return [str(e)]
    if ctx.spec.user_namespace is not None:
        problems.append("user namespaces: stockade does not checkpoint instances with a user_namespace yet")
    if ctx.spec.process.terminal:
        problems.append("terminal: the instance's terminal master is held on the host; run it without -t")
    s = inventory.session_problem(pid)
    if s:
        problems.append(s)
    if inv is None:
        inv = inventory.collect(pid)
    problems.extend(inv.problems)
    if inv.inet_listen or inv.inet_other:
        # Measured once per process: a CRIU/kernel pair may fail on any IP socket.
        why = criu.socket_problem("established" if inv.tcp else "listen")
        if why:
            problems.append(why)
    known = _known_mount_sources(ctx)
    for point in inv.ext_mounts:
        if point not in known:
            problems.append(
                f"mount {point}: its source is outside the instance and not from the spec; "
                "it cannot be re-created on restore"
            )
    if live:
        feats = criu.feature_check()
        if not feats["mem_track"] and not feats["lazy_pages"]:
            problems.append(
                "live migration: this kernel has neither soft-dirty tracking (pre-copy) "
                "nor userfaultfd (post-copy)"
            )
    return problems


def _known_mount_sources(ctx: InstanceContext) -> dict[str, str]:
    """Mount point inside -> what it is on restore: 'run:<file>', 'devnull', or a host path."""
    from ..rootfs import MASKED_PATHS

    out: dict[str, str] = {
        "/etc/hostname": "run:hostname",
        "/etc/hosts": "run:hosts",
        "/etc/resolv.conf": "run:resolv.conf",
    }
    for p in MASKED_PATHS:
        out[p] = "devnull"
    for m in ctx.spec.mounts:
        if m.type != "tmpfs":
            out[m.target] = m.source
    return out


def _opts_common(images_fd: int, log: str) -> dict[str, Any]:
    return {
        "images_dir_fd": images_fd,
        "log_level": LOG_LEVEL,
        "log_file": log,
        "tcp_established": 1,
        "ext_unix_sk": 1,
        "file_locks": 1,
        "shell_job": 1,
        "manage_cgroups": 1,
        "manage_cgroups_mode": pb.CG_IGNORE,
        "notify_scripts": 1,
        "orphan_pts_master": 1,
    }


def _call(
    req_type: int,
    opts: dict[str, Any],
    pass_fds: list[int],
    *,
    conf: tuple[str, ...] = (),
    notify: criu.NotifyFn | None = None,
    started: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """One request to a fresh ``criu swrk``: ``opts`` made fit for its version, and ``conf``
    (with what an older criu takes only that way) in an RPC config file; ``started`` gets
    criu's pid before the request goes out."""
    binary = criu.find()
    opts, legacy = criu.legacy_options(opts, criu.version_of(binary) or ())
    lines = [*conf, *legacy]
    path: str | None = None
    try:
        if lines:
            cfd, path = tempfile.mkstemp(prefix="stockade-criu-", suffix=".conf")
            with os.fdopen(cfd, "w") as f:
                f.write("".join(f"{ln}\n" for ln in lines))
            opts["config_file"] = path
        with criu.Swrk(binary, pass_fds=pass_fds) as s:
            if started is not None:
                started(s.proc.pid)
            return s.call(req_type, opts, notify=notify)
    finally:
        if path is not None:
            os.unlink(path)


# criu gives up on the whole tree when it finds one of its tasks in D state while seizing
# them (compel: "Unseizable non-zombie <pid> found, state D"; e.g. a child caught mid-exit);
# the tree runs on untouched, and a try a moment later normally finds it settled.
TRANSIENT_DUMP_ERRORS = ("Unseizable non-zombie",)
DUMP_TRIES = 3


def _dump_retrying(
    req_type: int,
    opts: dict[str, Any],
    pass_fds: list[int],
    images: Path,
    log: str,
    **kw: Any,
) -> tuple[dict[str, Any], float]:
    """``_call`` for a dump or pre-dump, tried again after a transient seize failure; the
    answer and when the last try started. A failed try's files go (its log is kept as
    ``<log>-tryN.log``); the stockade manifest stays."""
    for attempt in range(1, DUMP_TRIES + 1):
        t0 = time.monotonic()
        resp = _call(req_type, opts, pass_fds, **kw)
        if resp.get("success") or attempt == DUMP_TRIES:
            return resp, t0
        try:
            text = (images / log).read_text(errors="replace")
        except OSError:
            text = ""
        if not any(e in text for e in TRANSIENT_DUMP_ERRORS):
            return resp, t0
        for p in images.iterdir():
            if p.name == log:
                p.rename(images / f"{log.removesuffix('.log')}-try{attempt}.log")
            elif p.name != MANIFEST and (p.is_symlink() or p.is_file()):
                p.unlink()
        time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def dump(
    ctx: InstanceContext,
    images: Path,
    *,
    leave_running: bool = False,
    leave_stopped: bool = False,
    lazy_ps_fd: int | None = None,
    parent: str | None = None,
    on_images: Callable[[], None] | None = None,
    on_freeze: Callable[[], None] | None = None,
) -> DumpResult:
    """Checkpoint the instance into ``images`` (a directory, created if needed).

    ``lazy_ps_fd``: post-copy. Anonymous memory is not written; once the other images are
    complete (``on_images`` is called then) criu serves it as a page server on this connected
    socket until the peer's lazy-pages daemon has every page, and only then returns.
    ``parent``: the last pre-dump (a path relative to ``images``); only what changed since
    it is written (pre-copy). ``on_freeze`` is called just before criu freezes the tree (after
    its own start-up, which takes tens of ms where it cannot cache what it probes).
    """
    pid = _pid1(ctx)
    inv = inventory.collect(pid)
    problems = preflight(ctx, inv=inv)
    if problems:
        raise IsolationError(f"instance {ctx.name!r} cannot be checkpointed: {'; '.join(problems)}")
    known = _known_mount_sources(ctx)
    images.mkdir(parents=True, exist_ok=True)
    netns_external = inv.netns_inode is not None and inv.netns_inode != os.stat("/proc/self/ns/net").st_ino
    externals = [f"mnt[{point}]:{key}" for point, key in inv.ext_mounts.items()]
    externals += list(inv.ext_files)
    if netns_external:
        externals.append(f"net[{inv.netns_inode}]:{NETNS_KEY}")
    manifest = {
        "version": 1,
        "pid1": pid,
        "mounts": {key: known[point] for point, key in inv.ext_mounts.items()},
        "files": inv.ext_files,
        "file_modes": inv.ext_modes,
        "netns_external": netns_external,
        "tcp_established": inv.tcp,
        "network_mode": ctx.spec.network.mode,
    }
    # Written first: a post-copy dump hands its images over before criu returns.
    (images / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    conf: tuple[str, ...] = ()
    t_images: list[float] = []
    t_frozen: list[float] = []

    def notify(script: str, _pid: int) -> None:
        # "pre-dump" comes after criu's kernel probing, just before it seizes the tree: the
        # freeze starts there, not at the request.
        if script == "pre-dump":
            t_frozen.append(time.monotonic())
            if on_freeze is not None:
                on_freeze()
        elif script == "post-dump":
            t_images.append(time.monotonic())
            if on_images is not None:
                on_images()

    try:
        opts = _opts_common(fd, LOG_DUMP)
        opts.update(pid=pid, external=externals, leave_running=int(leave_running or leave_stopped))
        if leave_stopped:
            opts["leave_stopped"] = 1
        # nftables: this host has no iptables binaries, and nft locks only the instance's netns.
        opts["network_lock"] = pb.NETLOCK_NFTABLES if inv.tcp else pb.NETLOCK_SKIP
        fz = _freezer_path(ctx)
        if fz:
            opts["freeze_cgroup"] = fz
        if parent is not None:
            opts.update(parent_img=parent, track_mem=1)
        pass_fds = [fd]
        if lazy_ps_fd is not None:
            # RPC's `ps` message ignores its fd for lazy dumps (criu 4.1 cr-service.c) and
            # would listen on a TCP port of every address instead: the connected socket goes
            # in through an RPC config file (`ps-socket`), so no port is ever opened.
            conf = (f"ps-socket {lazy_ps_fd}",)
            opts["lazy_pages"] = 1
            pass_fds.append(lazy_ps_fd)
        resp, t0 = _dump_retrying(pb.DUMP, opts, pass_fds, images, LOG_DUMP, conf=conf, notify=notify)
        end = t_images[0] if t_images and lazy_ps_fd is not None else time.monotonic()
        freeze = end - (t_frozen[-1] if t_frozen and t_frozen[-1] >= t0 else t0)
    finally:
        os.close(fd)
    if not resp.get("success"):
        (images / MANIFEST).unlink(missing_ok=True)
        raise criu.CriuFailed(
            f"instance {ctx.name!r}: checkpoint failed: {criu.log_error(images / LOG_DUMP)} "
            f"(log: {images / LOG_DUMP})"
        )
    pages = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    total = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
    return DumpResult(freeze, pages, total)


def pre_dump(ctx: InstanceContext, images: Path, *, parent: str | None = None) -> DumpResult:
    """Pre-copy: write the instance's memory to ``images`` while it keeps running.

    Needs soft-dirty tracking: the next pre-dump (or the final dump) names this one as its
    ``parent`` and writes only the pages dirtied since.
    """
    pid = _pid1(ctx)
    inv = inventory.collect(pid)
    images.mkdir(parents=True, exist_ok=True)
    externals = [f"mnt[{point}]:{key}" for point, key in inv.ext_mounts.items()]
    externals += list(inv.ext_files)
    if inv.netns_inode is not None and inv.netns_inode != os.stat("/proc/self/ns/net").st_ino:
        externals.append(f"net[{inv.netns_inode}]:{NETNS_KEY}")
    fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
    try:
        opts = _opts_common(fd, LOG_PRE_DUMP)
        opts.update(pid=pid, external=externals, track_mem=1)
        if parent is not None:
            opts["parent_img"] = parent
        fz = _freezer_path(ctx)
        if fz:
            opts["freeze_cgroup"] = fz
        resp, t0 = _dump_retrying(pb.SINGLE_PRE_DUMP, opts, [fd], images, LOG_PRE_DUMP)
        frozen = time.monotonic() - t0
    finally:
        os.close(fd)
    if not resp.get("success"):
        raise criu.CriuFailed(
            f"instance {ctx.name!r}: pre-dump failed: {criu.log_error(images / LOG_PRE_DUMP)} "
            f"(log: {images / LOG_PRE_DUMP})"
        )
    pages = sum(p.stat().st_size for p in images.glob("pages-*.img"))
    total = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
    return DumpResult(frozen, pages, total)


def unlock_network(ctx: InstanceContext) -> list[str]:
    """Remove the network lock a dump left in the instance's network namespace; the tables
    removed (``inet CRIU-...``).

    A dump that leaves the tree stopped (``leave_stopped``: migration, checkpoint
    --leave-running) leaves the namespace locked too, for the copy to take over: criu's
    nftables table drops every packet. A tree resumed where it was (rollback, or after the
    file system copy) must get its network back. (criu locks the whole namespace where there
    is established TCP, and, before 3.19 which cannot skip the lock, always.)
    """
    from .. import syscalls
    from ..net.nft import Nft

    try:
        pid = _pid1(ctx)
        ns = f"/proc/{pid}/ns/net"
        if os.stat(ns).st_ino == os.stat("/proc/self/ns/net").st_ino:
            return []  # criu locks only a namespace of the tree's own
        fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
    except (StateConflict, FileNotFoundError, ProcessLookupError):
        return []  # the tree is gone, and its namespace with it
    removed: list[str] = []
    failed: list[BaseException] = []

    def run() -> None:
        # A thread of its own: setns(CLONE_NEWNET) moves only the calling thread, and this
        # one ends with it. The nft context (its netlink socket) is made inside the namespace.
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNET, "instance network namespace")
            nft = Nft()
            try:
                for item in nft.run_text("list tables inet"):
                    name = str(item.get("table", {}).get("name", ""))
                    if name.startswith("CRIU-"):
                        nft.run_text(f"delete table inet {name}")
                        removed.append(f"inet {name}")
            finally:
                nft.close()
        except BaseException as e:
            failed.append(e)

    try:
        t = threading.Thread(target=run, name="stockade-criu-unlock")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if failed:
        raise IsolationError(
            f"instance {ctx.name!r}: could not remove criu's network lock: {failed[0]}"
        ) from failed[0]
    return removed


class LazyPages:
    """``criu lazy-pages`` for a post-copy restore from the images in ``images``.

    It listens on ``images/lazy-pages.socket`` for the restoring criu, takes the restored
    tasks' userfaultfds, fetches each faulting page from the source's page server over
    ``ps_fd`` (a connected socket, relayed by the caller) and, once the restore is done,
    every other page in the background. It exits 0 when all pages are here.

    Started without waiting: criu spends tens of ms probing the kernel before it listens,
    which overlaps whatever the caller does next; ``wait_ready`` before the restore.
    """

    def __init__(self, images: Path, ps_fd: int) -> None:
        import subprocess

        self.log = images / LOG_LAZY
        # The status pipe's read end until wait_ready takes it; kill() may run in another thread.
        self._status: int | None = None
        self._lock = threading.Lock()
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [
                    criu.find(),
                    "lazy-pages",
                    "--page-server",
                    "--ps-socket",
                    str(ps_fd),
                    "--status-fd",
                    str(w),
                    "-D",
                    str(images),
                    "-W",
                    str(images),
                    "-o",
                    LOG_LAZY,
                    f"-v{LOG_LEVEL}",
                ],
                pass_fds=(ps_fd, w),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self._status = r

    def wait_ready(self, timeout: float = 30) -> None:
        """Until it listens (the restore connects to it at once); CriuFailed if it does not."""
        import select

        with self._lock:
            r, self._status = self._status, None
        if r is None:
            return
        try:
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready or os.read(r, 1) != b"\0":
                self.kill()
                raise criu.CriuFailed(f"criu lazy-pages did not start: {criu.log_error(self.log)}")
        finally:
            os.close(r)

    def wait(self, timeout: float | None = None) -> None:
        """Until every page is here; CriuFailed if the daemon failed, TimeoutError if slower."""
        import subprocess

        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired as e:
            raise TimeoutError(f"criu lazy-pages still running after {timeout} s") from e
        if rc != 0:
            raise criu.CriuFailed(f"criu lazy-pages failed (exit {rc}): {criu.log_error(self.log)}")

    def done(self) -> bool:
        return self.proc.poll() is not None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        with self._lock:
            r, self._status = self._status, None
        if r is not None:
            os.close(r)


def _new_netns(ctx: InstanceContext, loopback: bool) -> tuple[int, int]:
    """A fresh network namespace held by a parked child: (netns fd, child pid)."""
    from .. import spawn, syscalls

    r, w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(go_w)
            syscalls.unshare(syscalls.CLONE_NEWNET)
            if loopback:
                spawn.loopback_up()
            os.write(w, b"1")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    try:
        if os.read(r, 1) != b"1":
            raise IsolationError(f"instance {ctx.name!r}: could not make a network namespace for the restore")
        nsfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except BaseException:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(r)
    os.close(go_w)  # the child exits; the fd keeps the namespace
    os.waitpid(pid, 0)
    return nsfd, pid


def restore(
    ctx: InstanceContext,
    images: Path,
    join: JoinFn,
    *,
    stdout_path: Path | None = None,
    lazy: bool = False,
    leave_stopped: bool = False,
) -> Spawned:
    """Restore the checkpoint in ``images`` as instance ``ctx`` (storage and quota ready)."""
    from .. import syscalls
    from ..isolation import _etc_texts

    if ctx.rootfs is None:
        raise IsolationError(f"instance {ctx.name!r}: no root file system to restore into")
    try:
        manifest = json.loads((images / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise IsolationError(f"{images}: not a stockade checkpoint ({e})") from e
    run_dir = ctx.run_dir
    made_run_dir = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    for name, text in _etc_texts(ctx.spec):
        path = run_dir / name
        if not path.exists():
            path.write_text(text)
            made.append(name)
    opened: list[int] = []
    inherit: list[dict[str, Any]] = []
    externals: list[str] = []
    # CRIU < 3.18 (no skip_file_rwx_check) insists that a file handed back has the dumped
    # file's mode: the new log takes it for the restore, and gets its own back after.
    modes: dict[str, int] = manifest.get("file_modes", {})
    if (criu.version_of(criu.find()) or ())[:2] >= criu.RPC_SKIP_FILE_RWX_CHECK:
        modes = {}
    chmodded: list[tuple[int, int]] = []
    for key, what in manifest["mounts"].items():
        if what.startswith("run:"):
            src = str(run_dir / what[4:])
            if not os.path.exists(src):
                src = "/dev/null"
        elif what == "devnull":
            src = "/dev/null"
        else:
            src = what
        externals.append(f"mnt[{key}]:{src}")
    for key, role in manifest["files"].items():
        # Host files the instance held (its stdio): reading ones get /dev/null, writing
        # ones the new instance's log, opened with the flags the dumped fd had.
        flags = int(role.split(":", 1)[1], 8) if role.startswith("file:") else (0 if role == "in" else 1)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            fd = os.open("/dev/null", flags)
        else:
            target = stdout_path or Path("/dev/null")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, flags | os.O_CREAT, 0o640)
        opened.append(fd)
        st = os.fstat(fd)
        if key in modes and stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != modes[key]:
            os.fchmod(fd, modes[key])
            chmodded.append((fd, stat.S_IMODE(st.st_mode)))
        inherit.append({"key": key, "fd": fd})
    attached = False
    hooks = None
    try:
        if manifest.get("netns_external"):
            mode = ctx.spec.network.mode
            nsfd, _ = _new_netns(ctx, loopback=mode in ("loopback", "bridge"))
            opened.append(nsfd)
            if mode == "bridge":
                from ..isolation import _network_hooks

                hooks = _network_hooks()
                if hooks is None:
                    raise IsolationError(f"instance {ctx.name!r}: network mode bridge: not available")
                hooks[0](ctx, f"/proc/self/fd/{nsfd}")
                attached = True
            inherit.append({"key": NETNS_KEY, "fd": nsfd})
        fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        opened.append(fd)
        opts = _opts_common(fd, LOG_RESTORE)
        opts.update(root=str(ctx.rootfs.path), rst_sibling=1, inherit_fd=inherit, external=externals)
        # The host files handed back as stdio are new files (the new instance's log).
        opts["skip_file_rwx_check"] = 1
        if lazy:
            opts["lazy_pages"] = 1
        if leave_stopped:
            opts["leave_stopped"] = 1
        syscalls.set_child_subreaper()
        # The tree is forked by criu: let it start inside the instance's groups.
        resp = _call(pb.RESTORE, opts, opened, started=join)
        if not resp.get("success"):
            raise criu.CriuFailed(
                f"instance {ctx.name!r}: restore failed: {criu.log_error(images / LOG_RESTORE)} "
                f"(log: {images / LOG_RESTORE})"
            )
        pid = int(resp["restore"]["pid"])
    except BaseException:
        if attached and hooks is not None:
            with contextlib.suppress(Exception):
                hooks[1](ctx)
        for name in made:
            (run_dir / name).unlink(missing_ok=True)
        if made_run_dir:
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    finally:
        for fd, own in reversed(chmodded):  # the same file may be in twice
            with contextlib.suppress(OSError):
                os.fchmod(fd, own)
        for fd in opened:
            os.close(fd)
    from ..procid import start_time

    bag = ctx.bag("isolation")
    bag.clear()
    bag.update(
        pid=pid,
        start_time=start_time(pid),
        made=made,
        made_run_dir=made_run_dir,
        network_attached=attached,
        pidns=True,
        restored_from=str(images),
    )
    return Spawned(pid=pid)
