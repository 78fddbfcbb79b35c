"""Native ZFS errors -> StockadeError, one translator per operation (pyzfs style).

libzfs_core returns an errno whose meaning depends on the call (EEXIST from
``lzc_rollback_to`` means "not the latest snapshot", from ``lzc_clone`` "the name is
taken"), so each operation reads it in its own context. libzfs returns -1 and keeps an
``EZFS_*`` code in its handle: :func:`libzfs` maps those.

The errno numbers of the ZFS-specific codes differ between platforms (ECKSUM is EBADE on
Linux and EINTEGRITY on FreeBSD, ECHRNG and ETIME do not exist on FreeBSD...), so the
translators work on symbolic names looked up in an :class:`ErrnoTable`, one per platform;
the number is kept in ``err.errno``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from stockade.errors import (
    AlreadyExists,
    NotFound,
    NotSupported,
    QuotaExceeded,
    StateConflict,
    StockadeError,
    StorageError,
)


@dataclass(frozen=True)
class ErrnoTable:
    """Symbolic errno names -> numbers on one platform. Earlier names win on reverse lookup."""

    platform: str
    codes: Mapping[str, int]

    def name(self, code: int) -> str:
        for sym, num in self.codes.items():
            if num == code:
                return sym
        return f"E{code}"

    def __getitem__(self, sym: str) -> int:
        return self.codes[sym]


# Order matters for aliases: on FreeBSD ECHRNG is ENXIO and ETIME is ETIMEDOUT, and
# the plain name is what a number means there.
LINUX = ErrnoTable(
    "linux",
    {
        "EPERM": 1,
        "ENOENT": 2,
        "ESRCH": 3,
        "EINTR": 4,
        "EIO": 5,
        "ENXIO": 6,
        "EBADF": 9,
        "EAGAIN": 11,
        "ENOMEM": 12,
        "EACCES": 13,
        "EFAULT": 14,
        "EBUSY": 16,
        "EEXIST": 17,
        "EXDEV": 18,
        "ENODEV": 19,
        "ENOTDIR": 20,
        "EINVAL": 22,
        "ETXTBSY": 26,
        "EFBIG": 27,
        "ENOSPC": 28,
        "EROFS": 30,
        "EPIPE": 32,
        "ENAMETOOLONG": 36,
        "ENOTEMPTY": 39,
        "ECHRNG": 44,
        "ECKSUM": 52,
        "EFRAGS": 53,
        "ETIME": 62,
        "ENOTSUP": 95,
        "ETIMEDOUT": 110,
        "EDQUOT": 122,
    },
)
FREEBSD = ErrnoTable(
    "freebsd",
    {
        "EPERM": 1,
        "ENOENT": 2,
        "ESRCH": 3,
        "EINTR": 4,
        "EIO": 5,
        "ENXIO": 6,
        "EBADF": 9,
        "ENOMEM": 12,
        "EACCES": 13,
        "EFAULT": 14,
        "EBUSY": 16,
        "EEXIST": 17,
        "EXDEV": 18,
        "ENODEV": 19,
        "ENOTDIR": 20,
        "EINVAL": 22,
        "ETXTBSY": 26,
        "EFBIG": 27,
        "ENOSPC": 28,
        "EROFS": 30,
        "EPIPE": 32,
        "EAGAIN": 35,
        "ENOTSUP": 45,
        "ETIMEDOUT": 60,
        "ENAMETOOLONG": 63,
        "ENOTEMPTY": 66,
        "EDQUOT": 69,
        "ECKSUM": 97,
        # aliases (sys/zfs_context_os.h): never the first name of their number
        "ECHRNG": 6,
        "ETIME": 60,
        "EFRAGS": 28,
    },
)

# ZFS's own error numbers (zfs_errno_t, sys/fs/zfs.h): the same on every platform.
ZFS_ERR_BASE = 1024


def table(platform: str | None = None) -> ErrnoTable:
    if platform is None:
        from .libs import platform_key

        platform = platform_key()
    return FREEBSD if platform == "freebsd" else LINUX


def native(code: int, detail: str = "") -> OSError:
    """The native error to chain under the StockadeError (what ``--debug`` shows)."""
    try:
        text = os.strerror(code)
    except ValueError:
        text = f"error {code}"
    return OSError(code, f"{text}{': ' + detail if detail else ''}")


def _generic(sym: str, code: int, what: str) -> StockadeError:
    """The meaning a code has whatever the operation: the fallback of every translator."""
    if sym == "ENOENT":
        return NotFound(f"{what}: no such dataset or snapshot", errno=code)
    if sym == "EEXIST":
        return AlreadyExists(f"{what}: already exists", errno=code)
    if sym == "EBUSY":
        return StateConflict(f"{what}: dataset is busy (mounted, in use or being received)", errno=code)
    if sym == "EDQUOT":
        return QuotaExceeded(f"{what}: disk quota exceeded", errno=code)
    if sym in ("ENOSPC", "EFRAGS"):
        return StorageError(f"{what}: out of space in the pool", errno=code)
    if sym in ("EPERM", "EACCES"):
        return StorageError(f"{what}: permission denied (root and /dev/zfs are needed)", errno=code)
    if sym == "ENOTSUP":
        return NotSupported(f"{what}: not supported by this pool or ZFS version", errno=code)
    if sym == "ECKSUM":
        return StorageError(f"{what}: checksum error (data or stream corrupt)", errno=code)
    if sym == "EROFS":
        return StorageError(f"{what}: pool or dataset is read-only", errno=code)
    if sym == "ENAMETOOLONG":
        return StorageError(f"{what}: dataset name too long (256 bytes at most)", errno=code)
    if code >= ZFS_ERR_BASE:
        return StorageError(f"{what}: ZFS error {code} (zfs_errno_t)", errno=code)
    return StorageError(f"{what}: {os.strerror(code) if code < 512 else 'error'} ({sym})", errno=code)


def create(code: int, name: str, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "ENOENT":
        return NotFound(f"create {name}: the parent dataset does not exist", errno=code)
    if sym == "EINVAL":
        return StorageError(f"create {name}: invalid dataset name or property", errno=code)
    return _generic(sym, code, f"create {name}")


def clone(code: int, name: str, origin: str, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "ENOENT":
        return NotFound(f"clone {origin} -> {name}: the snapshot or the parent does not exist", errno=code)
    if sym == "EXDEV":
        return StorageError(f"clone {origin} -> {name}: a clone must be in the snapshot's pool", errno=code)
    if sym == "EINVAL":
        return StorageError(f"clone {origin} -> {name}: invalid name or property", errno=code)
    return _generic(sym, code, f"clone {origin} -> {name}")


def snapshot(code: int, name: str, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "EEXIST":
        return AlreadyExists(f"snapshot {name} already exists", errno=code)
    if sym == "EXDEV":
        return StorageError(f"snapshot {name}: snapshots taken together must be in one pool", errno=code)
    if sym == "EINVAL":
        return StorageError(f"snapshot {name}: invalid snapshot name", errno=code)
    return _generic(sym, code, f"snapshot {name}")


def destroy(code: int, name: str, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "EBUSY":
        return StateConflict(f"destroy {name}: dataset is mounted, in use or still has snapshots", errno=code)
    if sym == "EEXIST":
        # a head dataset with children, or a snapshot with clones
        return StateConflict(f"destroy {name}: still has dependent clones or children", errno=code)
    return _generic(sym, code, f"destroy {name}")


def rollback(
    code: int, fs: str, snap: str, newer: Iterable[str] = (), t: ErrnoTable | None = None
) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "EEXIST":
        later = ", ".join(newer) or "newer snapshots"
        return StateConflict(
            f"rollback {fs} to {snap}: only the latest snapshot can be restored and {later} "
            "came after it; delete those first",
            errno=code,
        )
    if sym == "ENOENT":
        return NotFound(f"rollback {fs}: snapshot {snap} does not exist", errno=code)
    if sym == "EBUSY":
        return StateConflict(f"rollback {fs}: dataset is busy", errno=code)
    return _generic(sym, code, f"rollback {fs} to {snap}")


def send(code: int, snap: str, base: str | None, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    what = f"send {snap}" + (f" from {base}" if base else "")
    if sym == "ENOENT":
        return NotFound(f"{what}: snapshot does not exist", errno=code)
    if sym == "EXDEV":
        return StorageError(f"{what}: {base} is not an earlier snapshot of the same dataset", errno=code)
    if sym in ("EPIPE", "EBADF"):
        return StorageError(f"{what}: the stream's file descriptor is closed or not writable", errno=code)
    if sym == "EINVAL":
        return StorageError(f"{what}: invalid snapshot pair or flags", errno=code)
    return _generic(sym, code, what)


def receive(code: int, snap: str, incremental: bool, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    what = f"receive {snap}"
    if sym == "EEXIST":
        return AlreadyExists(f"{what}: the snapshot or dataset already exists", errno=code)
    if sym == "ENODEV":
        return StateConflict(
            f"{what}: the incremental stream's base snapshot is not the latest snapshot of the destination",
            errno=code,
        )
    if sym == "ENOENT":
        return NotFound(
            f"{what}: "
            + (
                "the destination or the stream's base snapshot does not exist"
                if incremental
                else "the parent does not exist"
            ),
            errno=code,
        )
    if sym == "ETXTBSY":
        return StateConflict(f"{what}: the destination was modified since its latest snapshot", errno=code)
    if sym == "ECKSUM":
        return StorageError(f"{what}: checksum mismatch, the stream is corrupt", errno=code)
    if sym in ("EINVAL", "ECHRNG", "EBADF", "EIO"):
        return StorageError(f"{what}: the stream is invalid, truncated or unreadable ({sym})", errno=code)
    if code >= ZFS_ERR_BASE:
        return StorageError(
            f"{what}: the stream is truncated or uses unsupported features (ZFS error {code})", errno=code
        )
    return _generic(sym, code, what)


def rename(code: int, src: str, dest: str, t: ErrnoTable | None = None) -> StockadeError:
    t = t or table()
    sym = t.name(code)
    if sym == "EXDEV":
        return StorageError(f"rename {src} -> {dest}: cannot move across pools", errno=code)
    return _generic(sym, code, f"rename {src} -> {dest}")


# --- libzfs (EZFS_* codes kept in the handle) --------------------------------------------

# Names rather than numbers: resolved through the generated enum at runtime.
_EZFS: dict[str, tuple[type[StockadeError], int]] = {
    "EZFS_NOENT": (NotFound, 2),
    "EZFS_EXISTS": (AlreadyExists, 17),
    "EZFS_BUSY": (StateConflict, 16),
    "EZFS_UMOUNTFAILED": (StateConflict, 16),
    "EZFS_PROPSPACE": (QuotaExceeded, 122),
    "EZFS_NOSPC": (StorageError, 28),
    "EZFS_PERM": (StorageError, 1),
    "EZFS_NOTSUP": (NotSupported, 95),
    "EZFS_IOC_NOTSUPPORTED": (NotSupported, 95),
    "EZFS_DSREADONLY": (StorageError, 30),
    "EZFS_POOLREADONLY": (StorageError, 30),
    "EZFS_BADPROP": (StorageError, 22),
    "EZFS_PROPTYPE": (StorageError, 22),
    "EZFS_PROPREADONLY": (StorageError, 22),
    "EZFS_INVALIDNAME": (StorageError, 22),
    "EZFS_NAMETOOLONG": (StorageError, 36),
    "EZFS_MOUNTFAILED": (StorageError, 5),
    "EZFS_IO": (StorageError, 5),
}


def libzfs(op: str, name: str, ezfs: str, description: str, t: ErrnoTable | None = None) -> StockadeError:
    """Translate a libzfs failure; ``ezfs`` is the EZFS_* name of ``libzfs_errno``."""
    t = t or table()
    cls, linux_errno = _EZFS.get(ezfs, (StorageError, 5))
    sym = LINUX.name(linux_errno)
    code = t.codes.get(sym, linux_errno)
    return cls(f"{op} {name}: {description or ezfs} ({ezfs})", errno=code)
