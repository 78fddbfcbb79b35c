"""The thin layer over libzfs_core and libzfs: one function per native operation.

Every function takes and returns plain Python values and raises StockadeError
subclasses made by the operation's translator in :mod:`.translate`, with the native
error chained. Nothing here knows about instances or images: that is
:mod:`.storage`'s job. libzfs calls share one process-wide handle, which is not
thread-safe, so they hold ``_zlock``; libzfs_core calls are plain ioctls and don't, so a
send and a receive can run at once (through a pipe).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from stockade.errors import StockadeError

from . import translate
from .libs import lib
from .nvlist import NvValue, int32_items, nvlist_in, nvlist_out

_zlock = threading.RLock()

# lzc_send flags used by default: what `zfs send -L -e -c` does. The stream then needs
# a receiver whose pool has the large_blocks and embedded_data features (any pool made by
# OpenZFS >= 0.8 has them) and keeps compressed blocks compressed on the wire.
DEFAULT_SEND_FLAGS = ("LZC_SEND_FLAG_EMBED_DATA", "LZC_SEND_FLAG_LARGE_BLOCK", "LZC_SEND_FLAG_COMPRESS")


def _raise(err: StockadeError, code: int, detail: str = "") -> None:
    raise err from translate.native(code, detail)


# --- libzfs_core -----------------------------------------------------------------------------


def exists(name: str) -> bool:
    return bool(lib().core.lzc_exists(name.encode()))


def create(name: str, props: Mapping[str, NvValue]) -> None:
    """Create a file system (not mounted)."""
    libs = lib()
    with nvlist_in(props) as nvl:
        rc = libs.core.lzc_create(name.encode(), libs.core.LZC_DATSET_TYPE_ZFS, nvl, libs.ffi.NULL, 0)
    if rc:
        _raise(translate.create(rc, name), rc)


def clone(name: str, origin: str, props: Mapping[str, NvValue]) -> None:
    """Clone snapshot ``origin`` as ``name`` (O(1): shares every block; not mounted)."""
    with nvlist_in(props) as nvl:
        rc = lib().core.lzc_clone(name.encode(), origin.encode(), nvl)
    if rc:
        _raise(translate.clone(rc, name, origin), rc)


def snapshot(names: Iterable[str]) -> None:
    """Take the snapshots ``pool/fs@snap`` atomically (all or none)."""
    names = list(names)
    with nvlist_in(dict.fromkeys(names)) as snaps, nvlist_out() as errlist:
        rc = lib().core.lzc_snapshot(snaps, lib().ffi.NULL, errlist)
        failed = int32_items(errlist[0])
    if rc:
        culprit, code = next(iter(failed.items()), (names[0], rc))
        _raise(translate.snapshot(code, culprit), code)


def destroy_snapshots(names: Iterable[str]) -> None:
    """Destroy snapshots now (not deferred). Names that don't exist are ignored by ZFS."""
    names = list(names)
    if not names:
        return
    with nvlist_in(dict.fromkeys(names)) as snaps, nvlist_out() as errlist:
        rc = lib().core.lzc_destroy_snaps(snaps, 0, errlist)
        failed = int32_items(errlist[0])
    if rc:
        culprit, code = next(iter(failed.items()), (names[0], rc))
        _raise(translate.destroy(code, culprit), code)


def destroy(name: str) -> None:
    """Destroy a file system that has no snapshots or children, unmounted."""
    rc = lib().core.lzc_destroy(name.encode())
    if rc:
        _raise(translate.destroy(rc, name), rc)


def rollback_to(fs: str, snap: str, newer: Iterable[str] = ()) -> None:
    """Roll ``fs`` back to its snapshot ``snap`` (full name), which must be the latest."""
    rc = lib().core.lzc_rollback_to(fs.encode(), snap.encode())
    if rc:
        _raise(translate.rollback(rc, fs, snap, newer), rc)


def rename(src: str, dest: str) -> None:
    """Rename an unmounted file system within its pool."""
    rc = lib().core.lzc_rename(src.encode(), dest.encode())
    if rc:
        _raise(translate.rename(rc, src, dest), rc)


def send_flags(names: Iterable[str] = DEFAULT_SEND_FLAGS) -> int:
    core = lib().core
    flags = 0
    for n in names:
        flags |= int(getattr(core, n))
    return flags


def send(snap: str, base: str | None, fd: int, flags: int | None = None) -> None:
    """Write a full (``base`` None) or incremental stream of ``snap`` to ``fd``. Blocks."""
    libs = lib()
    frm = base.encode() if base else libs.ffi.NULL
    rc = libs.core.lzc_send(snap.encode(), frm, fd, send_flags() if flags is None else flags)
    if rc:
        _raise(translate.send(rc, snap, base), rc)


def send_space(snap: str, base: str | None, flags: int | None = None) -> int:
    """Estimated size in bytes of the stream :func:`send` would write."""
    libs = lib()
    out = libs.ffi.new("uint64_t *")
    frm = base.encode() if base else libs.ffi.NULL
    rc = libs.core.lzc_send_space(snap.encode(), frm, send_flags() if flags is None else flags, out)
    if rc:
        _raise(translate.send(rc, snap, base), rc)
    return int(out[0])


def receive(
    snap: str,
    fd: int,
    props: Mapping[str, NvValue] | None,
    *,
    incremental: bool,
    force: bool = False,
) -> None:
    """Read a stream from ``fd`` into the new snapshot ``snap`` (full: creates the fs).

    ``props`` become the dataset's *received* properties. None keeps those it has: an
    empty nvlist would clear them (the kernel replaces the whole received set).
    """
    libs = lib()
    if props is None:
        rc = libs.core.lzc_receive(snap.encode(), libs.ffi.NULL, libs.ffi.NULL, int(force), 0, fd)
    else:
        with nvlist_in(props) as nvl:
            rc = libs.core.lzc_receive(snap.encode(), nvl, libs.ffi.NULL, int(force), 0, fd)
    if rc:
        _raise(translate.receive(rc, snap, incremental), rc)


# --- libzfs ----------------------------------------------------------------------------------


def _libzfs_error(op: str, name: str) -> StockadeError:
    libs = lib()
    code = int(libs.zfs.libzfs_errno(libs.handle))
    desc = libs.ffi.string(libs.zfs.libzfs_error_description(libs.handle)).decode(errors="replace")
    try:
        ezfs = libs.ffi.string(libs.ffi.cast("zfs_error_t", code))
    except Exception:  # cffi gives the number as text for an unknown value; be safe anyway
        ezfs = str(code)
    return translate.libzfs(op, name, str(ezfs), desc)


@contextmanager
def _opened(name: str, op: str, types: int | None = None) -> Iterator[Any]:
    libs = lib()
    if types is None:
        types = int(libs.zfs.ZFS_TYPE_FILESYSTEM) | int(libs.zfs.ZFS_TYPE_SNAPSHOT)
    with _zlock:
        zhp = libs.zfs.zfs_open(libs.handle, name.encode(), types)
        if zhp == libs.ffi.NULL:
            raise _libzfs_error(op, name)
        try:
            yield zhp
        finally:
            libs.zfs.zfs_close(zhp)


def _prop(name: str) -> int:
    libs = lib()
    prop = int(libs.zfs.zfs_name_to_prop(name.encode()))
    if prop < 0:
        raise StockadeError(f"libzfs does not know the property {name!r}")
    return prop


def prop_index(prop: str, value: str) -> int:
    """The number an index property's value has in an nvlist (``canmount=noauto`` -> 2)."""
    libs = lib()
    out = libs.ffi.new("uint64_t *")
    if libs.zfs.zfs_prop_string_to_index(_prop(prop), value.encode(), out) != 0:
        raise StockadeError(f"{value!r} is not a value of the ZFS property {prop!r}")
    return int(out[0])


def props_int(name: str, props: Iterable[str]) -> dict[str, int]:
    """Numeric properties of a dataset or snapshot (``used``, ``refquota``, ``createtxg``...)."""
    wanted = {p: _prop(p) for p in props}
    zfs = lib().zfs
    with _opened(name, "get properties of") as zhp:
        return {p: int(zfs.zfs_prop_get_int(zhp, num)) for p, num in wanted.items()}


def set_props(name: str, props: Mapping[str, str]) -> None:
    """Set properties from their text form (``refquota=64M``, ``none``), as `zfs set` does."""
    zfs = lib().zfs
    with _opened(name, "set properties of") as zhp:
        for prop, value in props.items():
            if zfs.zfs_prop_set(zhp, prop.encode(), value.encode()) != 0:
                raise _libzfs_error(f"set {prop}={value} on", name)


def is_mounted(name: str) -> bool:
    libs = lib()
    with _opened(name, "check the mount of", int(libs.zfs.ZFS_TYPE_FILESYSTEM)) as zhp:
        return bool(libs.zfs.zfs_is_mounted(zhp, libs.ffi.NULL))


def mount(name: str) -> None:
    """Mount on the dataset's ``mountpoint`` (made if missing). A mounted one is left alone."""
    libs = lib()
    with _opened(name, "mount", int(libs.zfs.ZFS_TYPE_FILESYSTEM)) as zhp:
        if libs.zfs.zfs_is_mounted(zhp, libs.ffi.NULL):
            return
        if libs.zfs.zfs_mount(zhp, libs.ffi.NULL, 0) != 0:
            raise _libzfs_error("mount", name)


def unmount(name: str) -> None:
    libs = lib()
    with _opened(name, "unmount", int(libs.zfs.ZFS_TYPE_FILESYSTEM)) as zhp:
        if not libs.zfs.zfs_is_mounted(zhp, libs.ffi.NULL):
            return
        if libs.zfs.zfs_unmount(zhp, libs.ffi.NULL, 0) != 0:
            raise _libzfs_error("unmount", name)


def _iterate(name: str, start: Callable[[Any, Any], int], visit: Callable[[Any], None]) -> None:
    """Run a zfs_iter_* function; ``visit`` sees each handle, which is closed afterwards."""
    libs = lib()
    failure: list[BaseException] = []

    def callback(zhp: Any, _arg: Any) -> int:
        try:
            visit(zhp)
        except BaseException as e:  # an exception must not cross the C frame
            failure.append(e)
            return 1
        finally:
            libs.zfs.zfs_close(zhp)
        return 0

    cb = libs.ffi.callback("zfs_iter_f", callback)
    with _opened(name, "list") as zhp:
        start(zhp, cb)
    if failure:
        raise failure[0]


def children(name: str) -> list[str]:
    """Names of the direct child file systems of ``name``."""
    libs = lib()
    out: list[str] = []

    def visit(zhp: Any) -> None:
        out.append(libs.ffi.string(libs.zfs.zfs_get_name(zhp)).decode())

    _iterate(name, lambda zhp, cb: libs.zfs.zfs_iter_filesystems(zhp, cb, libs.ffi.NULL), visit)
    return sorted(out)


@dataclass(frozen=True)
class SnapInfo:
    name: str  # full, pool/fs@snap
    createtxg: int
    creation: int  # seconds since the epoch
    used: int
    referenced: int


def snapshots(name: str) -> list[SnapInfo]:
    """The snapshots of ``name``, oldest first."""
    libs = lib()
    props = {p: _prop(p) for p in ("createtxg", "creation", "used", "referenced")}
    out: list[SnapInfo] = []

    def visit(zhp: Any) -> None:
        vals = {p: int(libs.zfs.zfs_prop_get_int(zhp, num)) for p, num in props.items()}
        out.append(SnapInfo(libs.ffi.string(libs.zfs.zfs_get_name(zhp)).decode(), **vals))

    _iterate(name, lambda zhp, cb: libs.zfs.zfs_iter_snapshots(zhp, 0, cb, libs.ffi.NULL, 0, 0), visit)
    return sorted(out, key=lambda s: s.createtxg)
