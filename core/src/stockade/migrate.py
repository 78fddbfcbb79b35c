"""Moving an instance to another stockade host over one byte stream (SSH, a socket).

Frames: a 1-byte type and a 4-byte big-endian length, then the payload::

    J  a JSON control message          D  a chunk of the current data stream
    E  end of the current data stream  X  abort (JSON: {"error": ...}); the peer unwinds
    P  bytes of the relayed page-server connection (post-copy); empty: that side closed

Conversation (S = source, T = target)::

    S→T J hello {mode, method, manifest, formats offered}          T checks, picks a format
    T→S J accept {format, method} | X                                nothing made yet on T
    pre-copy: S pre-dumps while running, S→T J file {dir, name} D… E  (repeated, dirty pages only)
    cold: S stops the instance; live: S dumps it, left stopped (the freeze starts)
    live: S→T J file {dir, name, size} D… E per CRIU image file
          post-copy: without anonymous memory; S's criu then serves it (P frames)
    S→T J storage D… E                 T provisions, unpacks, (live) restores stopped
    T→S J ready                        stop-and-copy / pre-copy: S kills the source (only now)
    S→T J commit                       T resumes (live) or boots (cold)
    post-copy:  T→S J resumed          T runs; missing pages fault in through P frames, the
                                       rest follow in the background
                T→S J done             every page is on T: S kills the source (only now)
                S→T J end
    otherwise:  T→S J done {…}

Any error before the source is killed leaves it running: S resumes (live) or restarts
(cold) it, and T's undo stack removes all it made (storage, groups, state, images; in
post-copy also the already running copy, whose memory was incomplete).

The live method is chosen from what the kernel offers (``choose_method``): pre-copy where
it has soft-dirty tracking, post-copy (CRIU lazy pages over userfaultfd) where it has
userfaultfd, else stop-and-copy (memory moves while frozen).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

from . import checkpointing, storage_stream
from .errors import MigrationError, StockadeError

if TYPE_CHECKING:
    from .checkpointing import Checkpointer, LazyPagesDaemon
    from .host import Host, Instance
    from .interfaces import InstanceContext, StorageBackend

PROTOCOL = 2
CHUNK = 1 << 20
TUNNEL_CHUNK = 256 << 10
Mode = Literal["live", "cold"]
Method = Literal["auto", "pre-copy", "post-copy", "stop-and-copy"]
METHODS = ("auto", "pre-copy", "post-copy", "stop-and-copy")
PRE_DUMPS_MAX = 4
PRE_DUMP_ENOUGH = 4 << 20  # dirty memory left small enough to move while frozen
LAZY_TIMEOUT = float(os.environ.get("STOCKADE_LAZY_TIMEOUT", "600"))
_HDR = struct.Struct(">cI")
_DIR = re.compile(r"^(images|pre-\d{1,3})$")


def _fault(side: str, step: str) -> None:
    """Test hook: STOCKADE_MIGRATE_FAULT=<side>:<step> fails the migration at that step."""
    if os.environ.get("STOCKADE_MIGRATE_FAULT") == f"{side}:{step}":
        raise MigrationError(f"injected fault at {side}:{step} (STOCKADE_MIGRATE_FAULT)")


class RemoteError(MigrationError):
    """The other host reported an error (its message, one line)."""


class Channel:
    """Framed messages over a pair of binary streams (or one socket).

    One thread reads (``recv``); any thread may send: a lock keeps each frame whole, so a
    page-server relay (``Tunnel``) can send while the main thread streams the file system.
    """

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], closer: Callable[[], None] | None = None) -> None:
        self.r, self.w = rfile, wfile
        self._closer = closer
        self._sock: socket.socket | None = None  # of_socket: to bound peer_error's wait
        self._wlock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.tunnel: Tunnel | None = None
        self._inbox: queue.SimpleQueue[tuple[bytes, bytes] | BaseException] | None = None
        # Called in the reading thread for each page-server frame (the fault tests' hook).
        self.on_tunnel: Callable[[], None] | None = None
        # Called by the reader thread (start_reader) when the peer aborts or the link fails.
        self.on_abort: Callable[[], None] | None = None

    @classmethod
    def of_socket(cls, sock: socket.socket) -> Channel:
        r = cast(IO[bytes], sock.makefile("rb", buffering=CHUNK))
        w = cast(IO[bytes], sock.makefile("wb", buffering=CHUNK))

        def close() -> None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a reader thread blocked on it
            for f in (r, w):
                with contextlib.suppress(OSError):
                    f.close()
            sock.close()

        chan = cls(r, w, close)
        chan._sock = sock
        return chan

    @classmethod
    def of_fds(cls, rfd: int, wfd: int) -> Channel:
        r = os.fdopen(rfd, "rb", buffering=CHUNK)
        w = (
            os.fdopen(wfd, "wb", buffering=CHUNK)
            if wfd != rfd
            else os.fdopen(os.dup(wfd), "wb", buffering=CHUNK)
        )
        return cls(r, w, lambda: None)

    def close(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
        if self._closer:
            self._closer()

    def _send(self, kind: bytes, payload: bytes, flush: bool = False) -> None:
        with self._wlock:
            self.w.write(_HDR.pack(kind, len(payload)))
            self.w.write(payload)
            self.sent += _HDR.size + len(payload)
            if flush:
                self.w.flush()

    def send(self, msg: dict[str, Any]) -> None:
        self._send(b"J", json.dumps(msg).encode(), flush=True)

    def abort(self, error: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._send(b"X", json.dumps({"error": error}).encode(), flush=True)

    def peer_error(self, timeout: float = 5.0) -> str | None:
        """After a write failed because the peer hung up: the error it sent before it did
        (its abort frame), if that can be read within ``timeout``; else None. Socket
        channels only (a pipe's read could wait on whoever else holds its other end)."""
        if self._sock is None:
            return None
        try:
            self._sock.settimeout(timeout)
            while True:
                kind, data = self._recv()
                if kind == b"X":
                    return str(json.loads(data).get("error", "unknown error"))
        except (OSError, ValueError, MigrationError):
            return None

    def _recv(self) -> tuple[bytes, bytes]:
        if self._inbox is None:
            return self._read_frame()
        item = self._inbox.get()
        if isinstance(item, BaseException):
            self._inbox.put(item)  # every later recv fails the same way
            raise item
        return item

    def start_reader(self) -> None:
        """Read frames in a thread from now on, so page frames keep flowing while this side
        is busy elsewhere (the target's criu restore waits for pages of its own)."""
        if self._inbox is not None:
            return
        inbox: queue.SimpleQueue[tuple[bytes, bytes] | BaseException] = queue.SimpleQueue()
        self._inbox = inbox

        def run() -> None:
            while True:
                try:
                    item = self._read_frame()
                except BaseException as e:
                    self._aborted()
                    inbox.put(e)
                    return
                if item[0] == b"X":
                    self._aborted()
                inbox.put(item)

        threading.Thread(target=run, name="stockade-channel-reader", daemon=True).start()

    def _aborted(self) -> None:
        # The peer is gone or gave up: whatever waits on relayed pages must not wait forever.
        if self.on_abort is not None:
            with contextlib.suppress(Exception):
                self.on_abort()
        if self.tunnel is not None:
            self.tunnel.close()

    def _read_frame(self) -> tuple[bytes, bytes]:
        while True:
            hdr = self.r.read(_HDR.size)
            if len(hdr) < _HDR.size:
                raise MigrationError("the other host closed the connection")
            kind, n = _HDR.unpack(hdr)
            data = self.r.read(n)
            if len(data) < n:
                raise MigrationError("the other host closed the connection mid-message")
            self.received += _HDR.size + n
            if kind != b"P":
                return kind, data
            if self.tunnel is not None:  # none yet or any more: the relay is over
                self.tunnel.deliver(data)
            if self.on_tunnel is not None:
                self.on_tunnel()

    def recv(self, expect: str | None = None) -> dict[str, Any]:
        kind, data = self._recv()
        if kind == b"X":
            raise RemoteError(f"other host: {json.loads(data).get('error', 'unknown error')}")
        if kind != b"J":
            raise MigrationError(f"protocol error: expected a control message, got {kind!r}")
        msg: dict[str, Any] = json.loads(data)
        if expect is not None and msg.get("op") != expect:
            raise MigrationError(f"protocol error: expected {expect!r}, got {msg.get('op')!r}")
        return msg

    def send_stream(self, src: IO[bytes], progress: Callable[[int], None] | None = None) -> int:
        n = 0
        while True:
            b = src.read(CHUNK)
            if not b:
                break
            self._send(b"D", b)
            n += len(b)
            if progress:
                progress(len(b))
        self._send(b"E", b"", flush=True)
        return n

    def recv_stream(self, dst: IO[bytes]) -> int:
        n = 0
        while True:
            kind, data = self._recv()
            if kind == b"E":
                return n
            if kind == b"X":
                raise RemoteError(f"other host: {json.loads(data).get('error', 'unknown error')}")
            if kind != b"D":
                raise MigrationError(f"protocol error: expected data, got {kind!r}")
            dst.write(data)
            n += len(data)


class Tunnel:
    """One local stream connection relayed over a channel as ``P`` frames.

    Post-copy's page-server connection: CRIU's page server on the source and its
    lazy-pages daemon on the target each hold one end of a local socketpair, and the
    bytes between them cross the migration's own channel. So no TCP port is opened
    anywhere and the pages go wherever the channel goes (SSH, a socket), nowhere else.
    """

    def __init__(self, chan: Channel, sock: socket.socket) -> None:
        self.chan, self.sock = chan, sock
        self._q: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.sent = 0  # bytes from the local end to the peer
        self.received = 0
        self.error: BaseException | None = None
        self._closed = False
        chan.tunnel = self
        # Writes to the local end go through a queue: the channel's reader never blocks
        # on criu, which may itself be waiting for the other direction to drain.
        self._threads = [
            threading.Thread(target=self._pump, name="stockade-tunnel-out", daemon=True),
            threading.Thread(target=self._write, name="stockade-tunnel-in", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self) -> None:
        try:
            while True:
                b = self.sock.recv(TUNNEL_CHUNK)
                if self._closed:
                    return
                self.chan._send(b"P", b, flush=True)
                self.sent += len(b)
                if not b:
                    return
        except (OSError, ValueError) as e:
            if not self._closed:
                self.error = e

    def deliver(self, data: bytes) -> None:
        self._q.put(data)

    def _write(self) -> None:
        while True:
            b = self._q.get()
            if b is None:
                return
            try:
                if b:
                    self.sock.sendall(b)
                    self.received += len(b)
                else:
                    self.sock.shutdown(socket.SHUT_WR)
            except OSError as e:  # the local end is gone: keep draining, report it
                if not self._closed:
                    self.error = e

    def close(self) -> None:
        """Ends the relay: the local end sees EOF (criu's page server stops serving)."""
        if self._closed:
            return
        self._closed = True
        if self.chan.tunnel is self:
            self.chan.tunnel = None
        self._q.put(None)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self.sock.close()


@dataclass
class MigrationReport:
    name: str
    mode: str
    method: str  # how memory moved: "stop-and-copy", "pre-copy", "post-copy", "none (cold)"
    storage_format: str
    downtime_s: float  # from the freeze until the target runs it
    total_s: float  # until the source is gone (post-copy: after the last page moved)
    bytes_moved: int
    images_bytes: int = 0
    storage_bytes: int = 0
    pages_bytes: int = 0  # post-copy: memory served after the restore; pre-copy: pre-dumped
    why_method: str = ""  # why this method (what the kernel offers)
    steps: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"migrated {self.name} ({self.mode}, {self.method}, storage {self.storage_format}): "
            f"downtime {self.downtime_s * 1000:.0f} ms, total {self.total_s * 1000:.0f} ms, "
            f"{_size(self.bytes_moved)} moved"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@contextlib.contextmanager
def _progress(enabled: bool, total: int | None, what: str) -> Iterator[Callable[[int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=False,
    ) as p:
        task = p.add_task(what, total=total)
        yield lambda n: p.advance(task, n)


def choose_method(
    caps: dict[str, bool], requested: str = "auto", why_not: dict[str, str] | None = None
) -> tuple[str, str]:
    """The live method and why: pre-copy where the kernel tracks dirty memory (soft-dirty),
    else post-copy (userfaultfd), else stop-and-copy; a requested one that cannot run here
    is refused. ``why_not``: per capability, why it is missing (for the messages)."""
    why = why_not or {}
    if requested not in METHODS:
        raise MigrationError(f"live method {requested!r}: use one of {', '.join(METHODS)}")
    for method, cap, default in (
        ("pre-copy", "precopy", "needs soft-dirty memory tracking, which this kernel lacks"),
        ("post-copy", "postcopy", "needs userfaultfd (CRIU lazy pages), which this kernel lacks"),
    ):
        if requested == method and not caps.get(cap):
            raise MigrationError(f"live method {method}: {why.get(cap) or default}; use --method auto")
    if requested != "auto":
        return requested, "requested"
    if caps.get("precopy"):
        return "pre-copy", "the kernel tracks dirty memory"
    missing = why.get("precopy") or "no soft-dirty tracking"
    if caps.get("postcopy"):
        return "post-copy", f"{missing}; userfaultfd is there"
    return "stop-and-copy", f"{missing}; {why.get('postcopy') or 'no userfaultfd'}"


# --- source ---------------------------------------------------------------------------------


def _send_dir(chan: Channel, d: Path, dirname: str, adv: Callable[[int], None] | None) -> int:
    """Every image file of ``d`` (and its ``parent`` link) as ``file``/``link`` messages."""
    n = 0
    for p in sorted(d.iterdir()):
        if p.is_symlink():
            chan.send({"op": "link", "dir": dirname, "name": p.name, "target": os.readlink(p)})
        elif p.is_file() and not p.name.endswith(".log"):
            chan.send({"op": "file", "dir": dirname, "name": p.name, "size": p.stat().st_size})
            with open(p, "rb") as f:
                n += chan.send_stream(f, adv)
    return n


class _LazyDump:
    """A post-copy dump running in its own thread: criu returns only once the pages are served."""

    def __init__(
        self,
        cp: Checkpointer,
        ctx: InstanceContext,
        images: Path,
        chan: Channel,
        on_freeze: Callable[[], None] | None = None,
    ) -> None:
        criu_end, ours = socket.socketpair()
        self.criu_end = criu_end
        self.tunnel = Tunnel(chan, ours)
        self.images_ready = threading.Event()
        self.result: dict[str, Any] = {}
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = cp.checkpoint(
                    ctx,
                    images,
                    leave_running=True,
                    leave_stopped=True,
                    lazy_ps_fd=criu_end.fileno(),
                    on_images=self.images_ready.set,
                    on_freeze=on_freeze,
                )
            except BaseException as e:
                self.error = e
            finally:
                self.images_ready.set()

        self.thread = threading.Thread(target=run, name="stockade-lazy-dump", daemon=True)
        self.thread.start()

    def wait_images(self) -> None:
        self.images_ready.wait()
        if self.error is not None:
            raise self.error

    def finish(self, timeout: float) -> None:
        self.thread.join(timeout)

    def stop(self) -> None:
        """Rollback: the page server sees EOF and criu ends (leaving the tree stopped or,
        on its own error, running: the caller resumes it either way)."""
        self.tunnel.close()
        self.thread.join(60)
        self.criu_end.close()


def migrate(
    inst: Instance,
    chan: Channel,
    *,
    mode: Mode = "live",
    method: str = "auto",
    progress: bool = False,
    name: str | None = None,
    stop_timeout: float | None = None,
) -> MigrationReport:
    """Move ``inst`` to the host at the other end of ``chan``. On failure the source keeps running.

    ``method`` (live only): ``auto`` picks pre-copy, post-copy or stop-and-copy from what
    this kernel can do (see ``choose_method``); the report says which one ran.
    """
    host = inst.host
    t0 = time.monotonic()
    iso, quota, storage = host._parts(inst.state)
    inst.refresh()
    if inst.status != "running":
        raise MigrationError(
            f"instance {inst.name!r} is {inst.status}; only a running instance can be migrated"
        )
    cp = None
    how, why = "none (cold)", "cold"
    if mode == "live":
        cp = checkpointing.checkpointer_of(iso)
        problems = checkpointing.preflight(inst)  # the method falls back; see choose_method
        if problems:
            raise MigrationError(f"instance {inst.name!r} cannot be live-migrated: {'; '.join(problems)}")
        live_problems = getattr(cp, "live_problems", None)
        how, why = choose_method(cp.capabilities(), method, live_problems() if live_problems else None)
    formats = storage_stream.formats_for(storage)
    manifest = checkpointing.manifest_of(inst, formats[0], cp) if cp else _cold_manifest(inst, formats[0])
    if name:
        manifest["name"] = name
    chan.send(
        {
            "op": "hello",
            "protocol": PROTOCOL,
            "mode": mode,
            "method": how,
            "auto": method == "auto",
            "manifest": manifest,
            "formats": formats,
        }
    )
    acc = chan.recv("accept")
    fmt = acc["format"]
    if acc.get("method", how) != how:
        how, why = acc["method"], f"the target cannot do {how}"
    manifest["storage_format"] = fmt
    steps: dict[str, float] = {}
    ctx = inst.context()
    pids = quota.pids(ctx)
    tmp = Path(tempfile.mkdtemp(prefix="stockade-migrate-", dir=_tmp_base(host)))
    images = tmp / checkpointing.IMAGES
    killed = False
    stopped_source = False
    lazy: _LazyDump | None = None
    t_freeze = t_running = 0.0
    images_bytes = storage_bytes = pages_bytes = 0
    frozen: list[float] = []  # when the checkpointer froze the instance (after its start-up)

    def froze() -> None:
        frozen.append(time.monotonic())

    try:
        if cp is None:
            t_freeze = time.monotonic()
            inst.stop(timeout=stop_timeout)  # takes the instance's lock itself
            stopped_source = True
            steps["stop_s"] = time.monotonic() - t_freeze
        with host.store.lock(inst.name):
            parent: str | None = None
            if cp is not None and how == "pre-copy":
                with _progress(progress, None, "pre-copy") as adv:
                    parent, pages_bytes = _pre_copy(cp, ctx, tmp, chan, adv=adv, steps=steps)
            if cp is not None:
                t_call = time.monotonic()
                if how == "post-copy":
                    lazy = _LazyDump(cp, ctx, images, chan, on_freeze=froze)
                    lazy.wait_images()
                else:
                    cp.checkpoint(
                        ctx, images, leave_running=True, leave_stopped=True, parent=parent, on_freeze=froze
                    )
                # The downtime starts at the freeze; a checkpointer that does not say when
                # it froze is taken to have frozen at the call.
                t_freeze = frozen[-1] if frozen else t_call
                steps["dump_start_s"] = t_freeze - t_call
                steps["dump_s"] = time.monotonic() - t_freeze
                _fault("source", "dump")
                total = sum(p.stat().st_size for p in images.iterdir() if p.is_file())
                with _progress(progress, total, "images") as adv:
                    images_bytes = _send_dir(chan, images, checkpointing.IMAGES, adv)
                steps["images_s"] = time.monotonic() - t_freeze - steps["dump_s"]
            _fault("source", "images")
            t_st = time.monotonic()
            chan.send({"op": "storage", "format": fmt})
            with (
                storage_stream.sender(storage, ctx, fmt) as src,
                _progress(progress, None, "file system") as adv,
            ):
                storage_bytes = chan.send_stream(src, adv)
            steps["storage_s"] = time.monotonic() - t_st
            _fault("source", "storage")
            t_rs = time.monotonic()
            chan.recv("ready")
            steps["target_restore_s"] = time.monotonic() - t_rs
            if lazy is None:
                # The point of no return: the target holds a complete, stopped copy.
                if cp is not None:
                    _kill(pids)
                killed = True
                chan.send({"op": "commit"})
                chan.recv("done")
                t_running = time.monotonic()
            else:
                chan.send({"op": "commit"})
                chan.recv("resumed")
                t_running = time.monotonic()
                # From here the copy runs on the target and faults its pages in from us.
                chan.on_tunnel = lambda: _fault("source", "pages")
                with _progress(progress, None, "memory (post-copy)"):
                    chan.recv("done")
                chan.on_tunnel = None
                steps["pages_s"] = time.monotonic() - t_running
                # The target has every page: only now is the source expendable.
                _kill(pids)
                killed = True
                lazy.finish(30)
                pages_bytes = lazy.tunnel.sent
                lazy.tunnel.close()
                chan.send({"op": "end"})
        with contextlib.suppress(StockadeError):
            inst.delete(force=True)
    except BaseException as e:
        chan.on_tunnel = None
        if not killed:
            chan.abort(str(e))
            if lazy is not None:
                lazy.stop()
            if cp is not None:
                with contextlib.suppress(Exception):  # the migration's own error is the one to raise
                    checkpointing.unlock_network(cp, ctx)
                # Also those born after ``pids`` was read (the tree ran until the freeze): a
                # stopped child left behind stalls a parent that waits for it.
                fresh: list[int] = []
                with contextlib.suppress(Exception):
                    fresh = quota.pids(ctx)
                _resume(sorted(set(pids) | set(fresh)))
            elif stopped_source:
                with contextlib.suppress(StockadeError):
                    inst.start()
        if isinstance(e, OSError):
            # The target gave up (and hung up) while we were still sending: its reason, not
            # the broken pipe, is the error.
            peer = chan.peer_error()
            if peer is not None:
                raise RemoteError(f"other host: {peer}") from e
        raise
    finally:
        if lazy is not None:
            lazy.criu_end.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return MigrationReport(
        name=manifest["name"],
        mode=mode,
        method=how,
        storage_format=fmt,
        downtime_s=t_running - t_freeze,
        total_s=time.monotonic() - t0,
        bytes_moved=chan.sent + chan.received,
        images_bytes=images_bytes,
        storage_bytes=storage_bytes,
        pages_bytes=pages_bytes,
        why_method=why,
        steps=steps,
    )


def _pre_copy(
    cp: Checkpointer,
    ctx: InstanceContext,
    tmp: Path,
    chan: Channel,
    *,
    adv: Callable[[int], None] | None,
    steps: dict[str, float],
) -> tuple[str | None, int]:
    """Pre-dumps while the instance runs, each sent at once, until little memory is dirtied
    between two of them. Returns the last one (relative to the final images) and the bytes sent."""
    t = time.monotonic()
    parent: str | None = None
    last = -1
    sent = 0
    for i in range(1, PRE_DUMPS_MAX + 1):
        d = tmp / f"pre-{i}"
        r = cp.pre_dump(ctx, d, parent=parent)
        sent += _send_dir(chan, d, d.name, adv)
        parent = f"../{d.name}"
        pages = int(r["pages_bytes"])
        if pages <= PRE_DUMP_ENOUGH or (last >= 0 and pages >= last * 0.8):
            break  # small enough, or not shrinking: the final dump takes the rest
        last = pages
    steps["pre_copy_s"] = time.monotonic() - t
    return parent, sent


def _cold_manifest(inst: Instance, fmt: str) -> dict[str, Any]:
    st = inst.state
    return {
        "stockade_checkpoint": checkpointing.FORMAT_VERSION,
        "name": st.name,
        "id": st.id,
        "spec": st.spec,
        "backends": st.backends,
        "storage_format": fmt,
        "checkpointer": None,
    }


def _tmp_base(host: Host) -> str:
    d = host.run_dir / "migrate"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


def _kill(pids: list[int]) -> None:
    import signal

    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _resume(pids: list[int]) -> None:
    import signal

    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGCONT)


# --- target ---------------------------------------------------------------------------------


def _target_method(hello: dict[str, Any], cp: Checkpointer | None) -> str:
    how = str(hello.get("method", "stop-and-copy"))
    if cp is None or how != "post-copy" or cp.capabilities().get("postcopy"):
        return how
    if hello.get("auto"):
        return "stop-and-copy"  # pre-copy needs nothing of the target
    raise MigrationError("post-copy: the target's kernel has no userfaultfd (CRIU lazy pages)")


def _recv_images(chan: Channel, tmp: Path, first: dict[str, Any]) -> dict[str, Any]:
    """Image files and links into ``tmp/<dir>`` until a message of another kind arrives."""
    msg = first
    while msg.get("op") in ("file", "link"):
        dirname = str(msg.get("dir", checkpointing.IMAGES))
        if not _DIR.match(dirname):
            raise MigrationError(f"protocol error: image directory {dirname!r}")
        d = tmp / dirname
        d.mkdir(exist_ok=True)
        fname = os.path.basename(msg["name"])
        if msg["op"] == "link":
            target = str(msg["target"])
            if not re.match(r"^\.\./pre-\d{1,3}$", target):
                raise MigrationError(f"protocol error: image link to {target!r}")
            os.symlink(target, d / fname)
        else:
            with open(d / fname, "wb") as f:
                chan.recv_stream(f)
        msg = chan.recv()
    return msg


def serve(host: Host, chan: Channel) -> Instance:
    """Receive one instance from the other end of ``chan``; undo everything on failure."""
    tmp: Path | None = None
    daemon: LazyPagesDaemon | None = None
    tunnel: Tunnel | None = None
    try:
        hello = chan.recv("hello")
        if hello.get("protocol") != PROTOCOL:
            raise MigrationError(
                f"protocol {hello.get('protocol')!r} is not {PROTOCOL}: use the same stockade on both hosts"
            )
        m = hello["manifest"]
        mode = hello["mode"]
        if host.store.exists(m["name"]):
            raise MigrationError(f"an instance named {m['name']!r} already exists on the target")
        iso_name = m["backends"].get("isolation")
        from .interfaces import IsolationBackend, StorageBackend

        # Everything slow to look up (probes, CRIU's check, imports) happens now, before
        # the source freezes anything.
        storage = cast(StorageBackend, host.choose("storage", m["backends"].get("storage")))
        iso = cast(IsolationBackend, host.choose("isolation", iso_name))
        host.choose("quota", m["backends"].get("quota"))
        host.store.ensure()
        host._ensure_image(storage, m["spec"].get("image", "default"))
        cp: Checkpointer | None = None
        if mode == "live":
            cp = checkpointing.checkpointer_of(iso)
            warm = getattr(cp, "warm_up", None)
            if warm is not None:
                warm()
        how = _target_method(hello, cp)
        fmt = storage_stream.choose(hello["formats"], storage)
        tmp = Path(tempfile.mkdtemp(prefix="stockade-receive-", dir=_tmp_base(host)))
        images = tmp / checkpointing.IMAGES
        images.mkdir()
        chan.send({"op": "accept", "format": fmt, "method": how})
        msg = _recv_images(chan, tmp, chan.recv())
        if msg.get("op") != "storage":
            raise MigrationError(f"protocol error: unexpected {msg.get('op')!r}")
        _fault("target", "images")
        if cp is not None and how == "post-copy":
            # Started now and not waited for until the restore needs it: its start-up (criu's
            # kernel probing, ~30-40 ms here) overlaps the file system transfer and the
            # target's storage, groups and network.
            daemon_end, ours = socket.socketpair()
            try:
                tunnel = Tunnel(chan, ours)
                daemon = cp.lazy_pages(images, daemon_end.fileno())
            finally:
                daemon_end.close()
            # An abort while criu restores (it may wait on pages) ends the daemon, so the
            # restore ends too and the undo below runs.
            chan.on_abort = daemon.kill

        def fill(st_backend: StorageBackend, ctx: InstanceContext) -> int:
            with storage_stream.receiver(st_backend, ctx, fmt) as dst:
                n = chan.recv_stream(dst)
            _fault("target", "storage")
            if daemon is not None:
                chan.start_reader()
            return n

        m = dict(m, storage_format=fmt)
        inst = checkpointing.restore(
            host,
            tmp,
            manifest=m,
            fill_storage=fill,
            lazy=daemon is not None,
            leave_stopped=True,
            boot=(mode == "cold"),
            start_cold=False,
            before_restore=daemon.wait_ready if daemon is not None else None,
        )
        try:
            _fault("target", "restore")
            chan.send({"op": "ready", "pid": inst.pid})
            chan.recv("commit")
            if mode == "cold":
                checkpointing.boot_start(inst)
            else:
                _resume(inst.host._parts(inst.state)[1].pids(inst.context()))
            if daemon is not None:
                chan.send({"op": "resumed", "pid": inst.pid})
                _wait_pages(
                    chan, daemon, lambda: chan.send({"op": "done", "name": inst.name, "pid": inst.pid})
                )
            else:
                chan.send({"op": "done", "name": inst.name, "pid": inst.pid})
        except BaseException:
            if daemon is not None:
                daemon.kill()
            with contextlib.suppress(StockadeError):
                inst.delete(force=True)
            raise
        return inst
    except BaseException as e:
        chan.abort(str(e))
        raise
    finally:
        if daemon is not None:
            daemon.kill()
        if tunnel is not None:
            tunnel.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _wait_pages(chan: Channel, daemon: LazyPagesDaemon, send_done: Callable[[], None]) -> None:
    """Until the lazy-pages daemon has every page, relaying the channel's page frames meanwhile;
    then ``send_done`` and the source's ``end``.

    A reader thread keeps the channel drained (the pages arrive through it); an abort from
    the source, or the test fault, kills the daemon so the wait here ends too. After "done"
    the source kills its copy and answers "end": an abort instead means it resumed its copy
    first (ours must go); a lost connection keeps ours (the source may be gone already).
    """
    failed: list[BaseException] = []
    first = [True]

    def fault() -> None:
        if first[0]:
            first[0] = False
            _fault("target", "pages")

    def read() -> None:
        chan.on_tunnel = fault
        try:
            msg = chan.recv()
            if msg.get("op") != "end":
                failed.append(
                    MigrationError(f"protocol error: unexpected {msg.get('op')!r} while pages move")
                )
        except BaseException as e:
            failed.append(e)
        finally:
            chan.on_tunnel = None
            if not daemon.done():
                daemon.kill()

    r = threading.Thread(target=read, name="stockade-pages-reader", daemon=True)
    r.start()
    try:
        daemon.wait(LAZY_TIMEOUT)
    except BaseException as e:
        r.join(5)
        if failed:
            raise failed[0] from e
        raise
    if failed:
        raise failed[0]
    send_done()
    r.join(LAZY_TIMEOUT)
    if failed and isinstance(failed[0], RemoteError):
        raise failed[0]


def open_target(spec: str) -> tuple[Channel, Any]:
    """``ssh://[user@]host[/root]``, ``unix:/path`` or ``tcp:HOST:PORT`` -> a connected channel."""
    import subprocess

    if spec.startswith("ssh://"):
        rest = spec[6:]
        hostpart, _, root = rest.partition("/")
        cmd = ["ssh", "-oBatchMode=yes", hostpart, "stockade"]
        if root:
            cmd += ["--root", "/" + root]
        cmd += ["migrate-receive"]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        return Channel(p.stdout, p.stdin, lambda: None), p
    if spec.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(spec[5:])
        return Channel.of_socket(s), s
    if spec.startswith("tcp:"):
        h, _, port = spec[4:].rpartition(":")
        s = socket.create_connection((h, int(port)))
        return Channel.of_socket(s), s
    raise MigrationError(f"target {spec!r}: use ssh://[user@]host[/root], unix:/path or tcp:HOST:PORT")
