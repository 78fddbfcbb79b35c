"""The few btrfs ioctls the quota mode needs: subvolumes, quota groups and their usage.

A subvolume per instance is its quota group (0/<subvolume id>); a limit on its
*exclusive* bytes is the instance's disk quota. Usage comes from sysfs
(/sys/fs/btrfs/<fsid>/qgroups/0_<id>/, 5.9+), which the kernel updates at each
transaction commit, so readers sync the file system first. No ``btrfs`` subprocess.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import uuid
from dataclasses import dataclass
from functools import cache

BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F
BTRFS_IOC_INO_LOOKUP = 0xD0009412
BTRFS_IOC_FS_INFO = 0x8400941F
BTRFS_IOC_QUOTA_CTL = 0xC0109428
BTRFS_IOC_QGROUP_CREATE = 0x4010942A
BTRFS_IOC_QGROUP_LIMIT = 0x8030942B

BTRFS_QUOTA_CTL_ENABLE = 1
BTRFS_QGROUP_LIMIT_MAX_EXCL = 2
CLEAR_VALUE = (1 << 64) - 1  # "no limit" to BTRFS_IOC_QGROUP_LIMIT
FIRST_FREE_OBJECTID = 256  # inode number of every subvolume's root directory
TOP_LEVEL = 5

_SYSFS = "/sys/fs/btrfs"


class VolArgs(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_int64), ("name", ctypes.c_char * 4088)]


class InoLookupArgs(ctypes.Structure):
    _fields_ = [("treeid", ctypes.c_uint64), ("objectid", ctypes.c_uint64), ("name", ctypes.c_char * 4080)]


class FsInfoArgs(ctypes.Structure):
    _fields_ = [
        ("max_id", ctypes.c_uint64),
        ("num_devices", ctypes.c_uint64),
        ("fsid", ctypes.c_uint8 * 16),
        ("rest", ctypes.c_uint8 * (1024 - 32)),
    ]


class QuotaCtlArgs(ctypes.Structure):
    _fields_ = [("cmd", ctypes.c_uint64), ("status", ctypes.c_uint64)]


class QgroupCreateArgs(ctypes.Structure):
    _fields_ = [("create", ctypes.c_uint64), ("qgroupid", ctypes.c_uint64)]


class QgroupLimit(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("max_rfer", ctypes.c_uint64),
        ("max_excl", ctypes.c_uint64),
        ("rsv_rfer", ctypes.c_uint64),
        ("rsv_excl", ctypes.c_uint64),
    ]


class QgroupLimitArgs(ctypes.Structure):
    _fields_ = [("qgroupid", ctypes.c_uint64), ("lim", QgroupLimit)]


@dataclass(frozen=True)
class QgroupUsage:
    referenced: int
    exclusive: int
    max_exclusive: int | None  # None: no limit


def _dir_fd(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _ioctl(path: str, request: int, arg: ctypes.Structure) -> None:
    fd = _dir_fd(path)
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as e:
        e.filename = path
        raise
    finally:
        os.close(fd)


def create_subvolume(parent: str, name: str) -> None:
    args = VolArgs()
    args.name = os.fsencode(name)
    _ioctl(parent, BTRFS_IOC_SUBVOL_CREATE, args)


def destroy_subvolume(parent: str, name: str) -> None:
    """Unlink a subvolume at once, whatever it holds; the kernel frees its extents later."""
    args = VolArgs()
    args.name = os.fsencode(name)
    _ioctl(parent, BTRFS_IOC_SNAP_DESTROY, args)


def is_subvolume(path: str) -> bool:
    try:
        return os.lstat(path).st_ino == FIRST_FREE_OBJECTID
    except FileNotFoundError:
        return False


def subvolume_id(path: str) -> int:
    args = InoLookupArgs()
    args.treeid = 0
    args.objectid = FIRST_FREE_OBJECTID
    _ioctl(path, BTRFS_IOC_INO_LOOKUP, args)
    return int(args.treeid)


def fsid(path: str) -> str:
    args = FsInfoArgs()
    _ioctl(path, BTRFS_IOC_FS_INFO, args)
    return str(uuid.UUID(bytes=bytes(args.fsid)))


def enable_quota(mountpoint: str) -> None:
    args = QuotaCtlArgs()
    args.cmd = BTRFS_QUOTA_CTL_ENABLE
    _ioctl(mountpoint, BTRFS_IOC_QUOTA_CTL, args)


def quota_enabled(mountpoint: str) -> bool:
    return os.path.isdir(f"{_SYSFS}/{fsid(mountpoint)}/qgroups")


def set_exclusive_limit(mountpoint: str, subvol_id: int, limit: int | None) -> None:
    """Limit the bytes only subvolume ``subvol_id`` holds (None: no limit). Takes effect at once.

    Asked through the top-level subvolume: the call's transaction is charged to the subvolume
    whose fd it gets, so through the instance's own fd it fails with EDQUOT exactly when
    the instance is full, which is when the limit most needs raising.
    """
    args = QgroupLimitArgs()
    args.qgroupid = subvol_id
    args.lim.flags = BTRFS_QGROUP_LIMIT_MAX_EXCL
    args.lim.max_excl = CLEAR_VALUE if limit is None else limit
    _ioctl(mountpoint, BTRFS_IOC_QGROUP_LIMIT, args)


def remove_qgroup(mountpoint: str, subvol_id: int) -> bool:
    """Remove quota group 0/<id> of a destroyed subvolume; False while the kernel still
    holds it (the cleaner has not dropped the subvolume yet) or it is already gone."""
    args = QgroupCreateArgs()
    args.create = 0
    args.qgroupid = subvol_id
    try:
        _ioctl(mountpoint, BTRFS_IOC_QGROUP_CREATE, args)
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOENT, errno.EINVAL):
            return False
        raise
    return True


def qgroup_ids(mountpoint: str) -> list[int]:
    """Ids of the level-0 quota groups (one per subvolume, live or not yet removed)."""
    try:
        names = os.listdir(f"{_SYSFS}/{fsid(mountpoint)}/qgroups")
    except FileNotFoundError:
        return []
    return sorted(int(n[2:]) for n in names if n.startswith("0_") and n[2:].isdigit())


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def sync(path: str) -> None:
    """Commit the file system's transaction, so qgroup numbers include recent writes."""
    fd = _dir_fd(path)
    try:
        if _libc().syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def usage(mountpoint: str, subvol_id: int) -> QgroupUsage:
    base = f"{_SYSFS}/{fsid(mountpoint)}/qgroups/0_{subvol_id}"

    def read(name: str) -> int:
        with open(f"{base}/{name}") as f:
            return int(f.read().strip())

    limit = read("max_exclusive")
    # sysfs shows 0 or U64_MAX for "no limit" depending on the kernel
    return QgroupUsage(
        referenced=read("referenced"),
        exclusive=read("exclusive"),
        max_exclusive=None if limit in (0, CLEAR_VALUE) else limit,
    )
