"""An instance's root file system as a byte stream: for checkpoints and migration.

Formats, best first (the two ends of a migration pick the first both can use):

* ``native:<backend>`` — the storage backend's own stream (``send_stream``/``receive_stream``
  methods, e.g. ``zfs send``), when both ends run that backend;
* ``overlay-upper`` — only the overlay upper layer (whiteouts and opaque-dir xattrs
  included): the instance's changes, not the image;
* ``tree`` — the whole mounted root as a tar (any backend; the generic file stream).

Streams are GNU tar (numeric owners, xattrs, ACLs, sparse files) run as a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

from .errors import StorageError
from .interfaces import InstanceContext, StorageBackend

TAR_CREATE = [
    "tar",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--sparse",
    "--one-file-system",
    "-cf",
    "-",
]
TAR_EXTRACT = [
    "tar",
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
    "--same-permissions",
    "--same-owner",
    "-xf",
    "-",
]


@runtime_checkable
class StorageStreamer(Protocol):
    """Optional part of a storage backend: its native send/receive stream."""

    def send_stream(self, ctx: InstanceContext, out: IO[bytes]) -> None: ...

    def receive_stream(self, ctx: InstanceContext, inp: IO[bytes]) -> None:
        """Make the provisioned (empty, unmounted-or-mounted) instance ``ctx`` hold the stream's tree."""
        ...


def formats_for(storage: StorageBackend, ctx: InstanceContext | None = None) -> list[str]:
    out = []
    if isinstance(storage, StorageStreamer):
        out.append(f"native:{storage.name}")
    if storage.name == "overlay":
        out.append("overlay-upper")
    out.append("tree")
    return out


def choose(offered: list[str], storage: StorageBackend) -> str:
    mine = formats_for(storage)
    for f in offered:
        if f in mine:
            return f
    raise StorageError(f"no common storage stream format (offered {offered}, {storage.name!r} takes {mine})")


def _overlay_upper(ctx: InstanceContext) -> Path:
    bag = ctx.data.get("storage", {})
    if not bag.get("dir") or not bag.get("upper"):
        raise StorageError(f"instance {ctx.name!r}: overlay record has no upper dir")
    return Path(str(bag["dir"])) / str(bag["upper"])


def _source_dir(ctx: InstanceContext, fmt: str) -> Path:
    if fmt == "overlay-upper":
        return _overlay_upper(ctx)
    if ctx.rootfs is None:
        raise StorageError(f"instance {ctx.name!r}: its root file system is not mounted")
    return Path(ctx.rootfs.path)


@contextlib.contextmanager
def _piped(
    ctx: InstanceContext, what: str, work: Callable[[IO[bytes]], None], *, worker_writes: bool
) -> Iterator[IO[bytes]]:
    """Run a backend's native stream ``work`` in a thread on one end of a pipe and yield the
    other end (native send/receive write to or read from a file, not an iterator)."""
    import threading

    r, w = os.pipe()
    errs: list[BaseException] = []

    def run() -> None:
        try:
            with os.fdopen(w if worker_writes else r, "wb" if worker_writes else "rb") as f:
                work(f)
        except BaseException as e:
            errs.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    with os.fdopen(r if worker_writes else w, "rb" if worker_writes else "wb") as mine:
        yield mine
    t.join()
    if errs:
        raise StorageError(f"instance {ctx.name!r}: storage {what} failed: {errs[0]}") from errs[0]


@contextlib.contextmanager
def sender(storage: StorageBackend, ctx: InstanceContext, fmt: str) -> Iterator[IO[bytes]]:
    """A readable stream of the instance's file system in ``fmt``; raises if it failed."""
    if fmt.startswith("native:"):
        assert isinstance(storage, StorageStreamer)
        with _piped(ctx, "send", lambda f: storage.send_stream(ctx, f), worker_writes=True) as inp:
            yield inp
        return
    src = _source_dir(ctx, fmt)
    p = subprocess.Popen([*TAR_CREATE, "-C", str(src), "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    try:
        yield p.stdout
    finally:
        p.stdout.close()
        err = p.stderr.read() if p.stderr else b""
        if p.stderr:
            p.stderr.close()
        rc = p.wait()
    if rc not in (0,):
        raise StorageError(
            f"instance {ctx.name!r}: tar of {src} failed: {err.decode(errors='replace').strip()[-300:]}"
        )


def _wipe(d: Path) -> None:
    for e in os.scandir(d):
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path)
        else:
            os.unlink(e.path)


@contextlib.contextmanager
def receiver(storage: StorageBackend, ctx: InstanceContext, fmt: str) -> Iterator[IO[bytes]]:
    """A writable stream that replaces the provisioned instance's file system with what is written."""
    if fmt.startswith("native:"):
        assert isinstance(storage, StorageStreamer)
        with _piped(ctx, "receive", lambda f: storage.receive_stream(ctx, f), worker_writes=False) as out:
            yield out
        return
    remount = False
    if fmt == "overlay-upper":
        storage.unmount(ctx)
        remount = True
    dest = _source_dir(ctx, fmt)
    try:
        _wipe(dest)
        p = subprocess.Popen([*TAR_EXTRACT, "-C", str(dest)], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert p.stdin is not None
        try:
            yield p.stdin
        finally:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.close()
            err = p.stderr.read() if p.stderr else b""
            rc = p.wait()
        if rc != 0:
            raise StorageError(
                f"instance {ctx.name!r}: unpacking its file system failed: "
                f"{err.decode(errors='replace').strip()[-300:]}"
            )
    finally:
        if remount:
            rootfs = storage.mount(ctx)
            ctx.rootfs = rootfs


def copy(src: IO[bytes], dst: IO[bytes], progress: Any = None, chunk: int = 1 << 20) -> int:
    n = 0
    while True:
        b = src.read(chunk)
        if not b:
            return n
        dst.write(b)
        n += len(b)
        if progress is not None:
            progress(len(b))
