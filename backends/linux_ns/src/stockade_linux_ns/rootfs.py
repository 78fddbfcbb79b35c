"""The instance's mount table, built by its PID 1 in a private mount namespace.

Everything here runs in the child before ``pivot_root``: paths are host paths under the
root. Mount targets from the spec are resolved with ``secure_join`` (symlinks are
followed as if the root were ``/``), so a symlink in the image cannot point a mount
at the host.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from stockade import linux
from stockade.linux import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    MS_STRICTATIME,
)
from stockade.spec import Mount

from . import syscalls

MS_MANDLOCK = 64
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21

# statvfs f_flag bit -> mount flag, to keep the flags a bind remount must not clear
# (in a user namespace the kernel refuses to drop nosuid/nodev/noexec/atime flags).
_ST_TO_MS = {
    1: MS_RDONLY,
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    64: MS_MANDLOCK,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}

MASKED_PATHS = (
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# (name, major, minor); mode 0666 like every OCI runtime.
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)


@dataclass(frozen=True)
class RootPlan:
    root: str  # host path of the provisioned root file system
    userns: bool
    sysctl_writable: bool
    readonly: bool
    mounts: tuple[Mount, ...]
    etc_binds: tuple[tuple[str, str], ...]  # (host file, path inside) like /etc/hostname


def secure_join(root: str, path: str) -> str:
    """``root``/``path`` with symlinks resolved inside ``root`` (a chroot-style lookup)."""
    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == "..":
            if done:
                done.pop()
            continue
        cur = os.path.join(root, *done, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            done.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, f"too many symlinks resolving {path!r}")
            target = os.readlink(cur)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        done.append(part)
    return os.path.join(root, *done)


def _mkdirs(root: str, path: str) -> None:
    # Components were resolved by secure_join; refuse to follow anything created since.
    rel = os.path.relpath(path, root)
    cur = root
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        cur = os.path.join(cur, part)
        try:
            os.mkdir(cur, 0o755)
        except FileExistsError:
            st = os.lstat(cur)
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, f"{cur!r} is not a directory") from None


def _make_target(root: str, path: str, is_dir: bool) -> None:
    if is_dir:
        _mkdirs(root, path)
        return
    _mkdirs(root, os.path.dirname(path))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
    except IsADirectoryError:
        pass


def _mount_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    out = 0
    for st_bit, ms in _ST_TO_MS.items():
        if f & st_bit:
            out |= ms
    return out


def remount(path: str, add: int) -> None:
    """Remount the bind mount at ``path`` adding ``add`` flags, keeping the locked ones."""
    linux.mount(None, path, None, MS_BIND | MS_REMOUNT | _mount_flags(path) | add)


def bind_readonly_self(path: str) -> None:
    linux.mount(path, path, None, MS_BIND | MS_REC)
    remount(path, MS_RDONLY)


_OPTION_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "rw": 0,
    "bind": 0,
    "rbind": 0,
}


def _split_options(options: Iterable[str]) -> tuple[int, str]:
    flags = 0
    data: list[str] = []
    for opt in options:
        if opt in _OPTION_FLAGS:
            flags |= _OPTION_FLAGS[opt]
        else:
            data.append(opt)
    return flags, ",".join(data)


def setup(plan: RootPlan) -> None:
    """Build the instance's mount table under ``plan.root`` (still on the host's paths)."""
    root = plan.root
    # Nothing we mount may propagate back to the host.
    linux.mount(None, "/", None, MS_REC | MS_PRIVATE)
    linux.mount(root, root, None, MS_BIND | MS_REC)

    proc = secure_join(root, "/proc")
    _mkdirs(root, proc)
    linux.mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)

    sys_ = secure_join(root, "/sys")
    _mkdirs(root, sys_)
    sys_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC | (0 if plan.sysctl_writable else MS_RDONLY)
    try:
        linux.mount("sysfs", sys_, "sysfs", sys_flags)
    except OSError as e:
        # A user namespace that shares the host's network namespace may not mount sysfs.
        if e.errno != errno.EPERM:
            raise
        linux.mount("/sys", sys_, None, MS_BIND | MS_REC)
        if not plan.sysctl_writable:
            remount(sys_, MS_RDONLY)

    _setup_dev(root, plan.userns)

    for host_file, inside in plan.etc_binds:
        target = secure_join(root, inside)
        if not os.path.lexists(target):
            try:
                _make_target(root, target, is_dir=False)
            except OSError:
                continue  # a read-only image without that file: leave it out
        if os.path.isfile(target):
            # Read-only: the files live on the host (its /run), stockade rewrites them in
            # place (hosts, as a network's members change), and the instance must not be
            # able to fill the host's file system through them.
            linux.mount(host_file, target, None, MS_BIND)
            remount(target, MS_RDONLY)

    for m in plan.mounts:
        _spec_mount(root, m)

    masked_dir: str | None = None
    for path in MASKED_PATHS:
        masked_dir = _mask(secure_join(root, path), masked_dir)
    for path in READONLY_PATHS:
        if plan.sysctl_writable and path == "/proc/sys":
            continue
        p = secure_join(root, path)
        if os.path.lexists(p):
            bind_readonly_self(p)

    if plan.readonly:
        remount(root, MS_RDONLY)


def _spec_mount(root: str, m: Mount) -> None:
    target = secure_join(root, m.target)
    flags, data = _split_options(m.options)
    if m.readonly:
        flags |= MS_RDONLY
    if m.type == "tmpfs":
        _make_target(root, target, is_dir=True)
        linux.mount("tmpfs", target, "tmpfs", flags | MS_NOSUID | MS_NODEV, data or None)
        return
    try:
        is_dir = os.path.isdir(m.source)
        if not os.path.exists(m.source):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
    except OSError as e:
        raise OSError(e.errno, f"mount source {m.source!r} for {m.target!r}: {e.strerror}") from e
    _make_target(root, target, is_dir)
    linux.mount(m.source, target, None, MS_BIND | MS_REC)
    if flags:
        remount(target, flags)


def _mask(path: str, masked_dir: str | None) -> str | None:
    """Hide ``path`` (a file behind /dev/null, a directory behind an empty read-only
    tmpfs); returns the directory mask that later ones share.

    Every directory mask is a bind of one tmpfs, not a tmpfs each: CRIU archives each tmpfs
    super block with tar and gzip on checkpoint and again on restore (~5-15 ms a time, in a
    live migration's downtime), and a bind of the first costs nothing."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return masked_dir
    if not stat.S_ISDIR(st.st_mode):
        linux.mount("/dev/null", path, None, MS_BIND)
        return masked_dir
    if masked_dir is None:
        linux.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=555")
        return path
    # its flags (read-only, nosuid, nodev, noexec) come with it; the super block is read-only
    linux.mount(masked_dir, path, None, MS_BIND)
    return masked_dir


def _setup_dev(root: str, userns: bool) -> None:
    dev = secure_join(root, "/dev")
    _mkdirs(root, dev)
    linux.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        path = os.path.join(dev, name)
        if userns:
            # No mknod in a user namespace: bind the host's node instead.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
            linux.mount(f"/dev/{name}", path, None, MS_BIND)
        else:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    pts_opts = "newinstance,ptmxmode=0666,mode=0620" + ("" if userns else ",gid=5")
    linux.mount("devpts", pts, "devpts", MS_NOSUID | MS_NOEXEC, pts_opts)
    # /dev/shm is a directory of /dev's tmpfs, bound onto itself to be nosuid, nodev and
    # noexec, not a tmpfs of its own: CRIU archives every tmpfs super block with tar and gzip
    # on checkpoint and again on restore (~5-15 ms each, in a live migration's downtime).
    # It shares /dev's 64 MiB, which holds nothing else of size.
    shm = os.path.join(dev, "shm")
    os.mkdir(shm)
    os.chmod(shm, 0o1777)
    linux.mount(shm, shm, None, MS_BIND)
    remount(shm, MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mq = os.path.join(dev, "mqueue")
    os.mkdir(mq, 0o755)
    linux.mount("mqueue", mq, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))


def pivot(root: str) -> None:
    """Make ``root`` the root and drop the host's tree (the pivot_root(".", ".") trick)."""
    os.chdir(root)
    syscalls.pivot_root(".", ".")
    linux.umount(".", MNT_DETACH)
    os.chdir("/")
