"""Loop devices through the kernel's ioctls: attach a file, find ours again, detach.

No ``losetup`` subprocess: a free device comes from /dev/loop-control (LOOP_CTL_GET_FREE),
the file is bound with LOOP_CONFIGURE (one call, 5.8+) or LOOP_SET_FD + LOOP_SET_STATUS64
(older kernels), always with LO_FLAGS_AUTOCLEAR: once the last user (the mount) lets go,
the kernel detaches the device itself, so an unmount, or a crash after it, leaves nothing.
The backing file's path (in sysfs, ``loop/backing_file``) is how a device is found again.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64

_CONTROL = "/dev/loop-control"
_SYS_BLOCK = "/sys/block"


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_char * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * 32),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


@dataclass(frozen=True)
class Loop:
    path: str  # /dev/loopN
    number: int
    device: str  # "MAJ:MIN"
    backing: str  # the backing file, as the kernel reports it


def _status(path: str, name: str, flags: int) -> LoopInfo64:
    info = LoopInfo64()
    info.lo_flags = flags
    # lo_file_name is what the kernel hands out when the backing path is gone; it says
    # whose device this is even then.
    info.lo_file_name = os.fsencode(name)[: LO_NAME_SIZE - 1]
    return info


def _label(backing: str) -> str:
    """Up to 63 bytes that name the backing file: its path, or 'stockade:…<tail>'."""
    raw = os.fsencode(backing)
    if len(raw) < LO_NAME_SIZE:
        return backing
    return "stockade:…" + os.fsdecode(raw[-(LO_NAME_SIZE - 1 - len("stockade:…".encode())) :])


def attach(backing: str, *, read_only: bool = False, retries: int = 20) -> tuple[Loop, int]:
    """Bind ``backing`` to a free loop device with autoclear; return it and an open fd of it.

    The caller must close the fd once something else holds the device (a mount): closing
    it first lets autoclear detach the device at once.
    """
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if read_only else 0)
    mode = os.O_RDONLY if read_only else os.O_RDWR
    file_fd = os.open(backing, mode | os.O_CLOEXEC)
    try:
        ctl = os.open(_CONTROL, os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(retries):
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
                dev_path = f"/dev/loop{n}"
                try:
                    dev_fd = _open_node(dev_path, n, mode)
                except FileNotFoundError:
                    time.sleep(0.005)  # udev/devtmpfs has not made the node yet
                    continue
                try:
                    _configure(dev_fd, file_fd, dev_path, _label(backing), flags)
                except OSError as e:
                    os.close(dev_fd)
                    if e.errno == errno.EBUSY:  # another process took it between the two calls
                        continue
                    raise
                return _describe(dev_path, n, backing), dev_fd
        finally:
            os.close(ctl)
    finally:
        os.close(file_fd)
    raise OSError(errno.EBUSY, f"no free loop device after {retries} tries", backing)


def _open_node(path: str, n: int, mode: int) -> int:
    try:
        return os.open(path, mode | os.O_CLOEXEC)
    except FileNotFoundError:
        # No devtmpfs (a minimal /dev): make the node; loop is block major 7.
        os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(7, n))
        return os.open(path, mode | os.O_CLOEXEC)


def _configure(dev_fd: int, file_fd: int, dev_path: str, name: str, flags: int) -> None:
    cfg = LoopConfig()
    cfg.fd = file_fd
    cfg.info = _status(dev_path, name, flags)
    try:
        fcntl.ioctl(dev_fd, LOOP_CONFIGURE, cfg)
        return
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):  # before 5.8
            raise
    fcntl.ioctl(dev_fd, LOOP_SET_FD, file_fd)
    try:
        fcntl.ioctl(dev_fd, LOOP_SET_STATUS64, _status(dev_path, name, flags))
    except OSError:
        fcntl.ioctl(dev_fd, LOOP_CLR_FD, 0)
        raise


def _describe(dev_path: str, n: int, backing: str) -> Loop:
    st = os.stat(dev_path)
    return Loop(
        path=dev_path,
        number=n,
        device=f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}",
        backing=backing_of(n) or backing,
    )


def backing_of(n: int) -> str | None:
    """The backing file of loop device ``n`` (None when it is not bound)."""
    try:
        with open(f"{_SYS_BLOCK}/loop{n}/loop/backing_file") as f:
            return f.read().rstrip("\n")
    except OSError:
        return None


def bound() -> list[Loop]:
    """Every bound loop device on the host."""
    out = []
    try:
        names = os.listdir(_SYS_BLOCK)
    except OSError:
        return []
    for name in names:
        if not name.startswith("loop") or not name[4:].isdigit():
            continue
        n = int(name[4:])
        backing = backing_of(n)
        if backing is None:
            continue
        try:
            with open(f"{_SYS_BLOCK}/{name}/dev") as f:
                device = f.read().strip()
        except OSError:
            continue
        out.append(Loop(path=f"/dev/{name}", number=n, device=device, backing=backing))
    return sorted(out, key=lambda lo: lo.number)


def find(backing: str) -> list[Loop]:
    """Loop devices bound to ``backing`` (a deleted file shows as '<path> (deleted)')."""
    return [lo for lo in bound() if lo.backing in (backing, f"{backing} (deleted)")]


def detach(loop: Loop) -> None:
    """Detach now if unused, else mark autoclear so the kernel detaches it when let go."""
    try:
        fd = os.open(loop.path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        try:
            fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        except OSError as e:
            if e.errno == errno.ENXIO:  # already free
                return
            if e.errno != errno.EBUSY:
                raise
            info = LoopInfo64()
            fcntl.ioctl(fd, LOOP_GET_STATUS64, info)
            if not info.lo_flags & LO_FLAGS_AUTOCLEAR:
                info.lo_flags |= LO_FLAGS_AUTOCLEAR
                fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    finally:
        os.close(fd)


def wait_detached(backing: str, timeout: float = 2.0) -> bool:
    """Autoclear runs on the last close, which an unmount may finish a moment later."""
    deadline = time.monotonic() + timeout
    while find(backing):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
