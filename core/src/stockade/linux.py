"""A thin layer over the Linux calls several backends share (mount, umount2), via ctypes.

Kept in core so the isolation and storage backends bind libc once. Importing this
module loads nothing; libc is opened on first use. Errors come back as OSError with
the errno and the path, ready for a backend to translate.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8


@cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _b(s: str | bytes | None) -> bytes | None:
    if s is None:
        return None
    return s.encode() if isinstance(s, str) else s


def mount(
    source: str | None, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None
) -> None:
    if libc().mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype or 'bind'} {source!r} on {target!r}: {os.strerror(e)}", target)


def umount(target: str, flags: int = 0) -> None:
    if libc().umount2(_b(target), ctypes.c_int(flags)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {target!r}: {os.strerror(e)}", target)


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below ``prefix`` in this mount namespace, deepest first."""
    prefix = prefix.rstrip("/")
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split(" ", 5)[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return sorted(out, key=lambda p: p.count("/"), reverse=True)


def is_mountpoint(path: str) -> bool:
    return path.rstrip("/") in mounts_under(path)


def umount_tree(prefix: str) -> list[str]:
    """Unmount everything at or below ``prefix`` (deepest first, lazily if busy)."""
    gone: list[str] = []
    for mp in mounts_under(prefix):
        try:
            umount(mp)
        except OSError:
            umount(mp, MNT_DETACH)
        gone.append(mp)
    return gone
