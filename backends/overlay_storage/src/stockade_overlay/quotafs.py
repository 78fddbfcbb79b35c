"""One loop-backed btrfs per host root, mounted over the overlay backend's storage dir.

Made once per host root (sparse file + mkfs.btrfs + quota on, ~60 ms), then attached and
mounted on demand (~20 ms). Everything of the backend lives in it: images, uppers,
snapshots, so an overlay copy-up from an image is a reflink and each instance's
subvolume can carry a quota. The loop device has autoclear: unmounting the file system
is what detaches it, so no path leaves a device behind that an unmount does not take.

Names, so what a crash leaves is found again: the image is ``<root>/storage/overlay.btrfs``
(the loop device's backing file, and its lo_file_name), the file system label is
``stockade-<host tag>``, the mount point is ``<root>/storage/overlay``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from stockade.errors import StorageError

from . import btrfs, loopdev

MIN_SIZE = 256 << 20  # below this mkfs.btrfs needs mixed block groups
MOUNT_OPTIONS = "discard=async"  # freed blocks go back to the host file's holes


def _mount_source(mountpoint: str) -> str | None:
    """Source of the file system mounted at ``mountpoint`` (topmost), or None. Not the device
    number: btrfs shows an anonymous one there, never the loop device's."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split(" ")[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            if mp == mountpoint:
                found = right.split(" ")[1]
    return found


class SharedFs:
    def __init__(self, image: Path, mountpoint: Path, label: str, size: int | None) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.label = label
        self.size = size
        self._loop: loopdev.Loop | None = None  # cached once mounted by this process

    # -- state --

    def exists(self) -> bool:
        return self.image.is_file()

    def loop(self) -> loopdev.Loop | None:
        """The loop device holding our image, if it is mounted at our mount point."""
        source = _mount_source(str(self.mountpoint))
        if source is None:
            return None
        for lo in loopdev.find(str(self.image)):
            if lo.path == source:
                return lo
        return None

    def device(self) -> str:
        lo = self._loop or self.loop()
        if lo is None:
            raise StorageError(f"the storage file system {self.image} is not mounted at {self.mountpoint}")
        return lo.device

    # -- make, mount, unmount --

    def ensure(self, create: bool) -> loopdev.Loop | None:
        """Mounted (made first when ``create``); None when there is none and create is False.

        Reads trust what this process saw last; ``create`` (the paths that write into the
        file system) looks again, as gc in another process may have unmounted it since.
        """
        if self._loop is not None and not create:
            return self._loop
        lo = self.loop()
        if lo is None:
            if not create and not self.exists():
                return None
            with self._locked():
                lo = self.loop()
                if lo is None:
                    if not self.exists():
                        self._make()
                    lo = self._mount()
        self._loop = lo
        return lo

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.image.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(
            self.image.with_name(f".{self.image.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _refuse_shadowing(self) -> None:
        try:
            left = [e for e in os.listdir(self.mountpoint) if not e.startswith(".")]
        except FileNotFoundError:
            return
        if left:
            raise StorageError(
                f"storage dir {self.mountpoint} already holds storage made without quota_fs "
                f"({', '.join(sorted(left)[:3])}); use another --root for quota_fs, or remove it"
            )

    def _make(self) -> None:
        self._refuse_shadowing()
        mkfs = shutil.which("mkfs.btrfs") or shutil.which("mkfs.btrfs", path="/usr/sbin:/sbin")
        if mkfs is None:
            raise StorageError("quota_fs 'btrfs' needs mkfs.btrfs (install btrfs-progs)")
        size = self.size or _default_size(self.image.parent)
        tmp = self.image.with_name(f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{self.image.name}")
        try:
            with open(tmp, "wb") as f:
                f.truncate(size)
            subprocess.run(
                [mkfs, "-q", "-f", "-L", self.label, str(tmp)], check=True, capture_output=True, text=True
            )
            os.rename(tmp, self.image)
        except subprocess.CalledProcessError as e:
            detail = (e.stderr or "").strip().splitlines()
            raise StorageError(
                f"cannot make the storage file system {self.image}: "
                f"{detail[-1] if detail else f'mkfs.btrfs exited {e.returncode}'}"
            ) from e
        except OSError as e:
            raise StorageError(f"cannot make the storage file system {self.image}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def _mount(self) -> loopdev.Loop:
        from stockade import linux

        self._refuse_shadowing()
        try:
            self.mountpoint.mkdir(parents=True, exist_ok=True)
            # A device left bound to our file (its mount gone in this namespace, or a crash
            # between attach and mount) is reused: a second device with the same btrfs
            # would be refused as a duplicate.
            existing = loopdev.find(str(self.image))
            if existing:
                lo, fd = existing[0], os.open(existing[0].path, os.O_RDWR | os.O_CLOEXEC)
            else:
                lo, fd = loopdev.attach(str(self.image))
            try:
                linux.mount(lo.path, str(self.mountpoint), "btrfs", linux.MS_NOATIME, MOUNT_OPTIONS)
            finally:
                os.close(fd)  # the mount holds the device now; autoclear acts on unmount
            if not btrfs.quota_enabled(str(self.mountpoint)):
                btrfs.enable_quota(str(self.mountpoint))
            for sub in ("images", "instances"):
                (self.mountpoint / sub).mkdir(exist_ok=True)
            os.chmod(self.mountpoint, 0o711)
        except OSError as e:
            raise StorageError(
                f"cannot mount the storage file system {self.image} on {self.mountpoint}: "
                f"{e.strerror} (see dmesg)"
            ) from e
        return lo

    def unmount(self) -> bool:
        """Unmount (lazily if busy); the loop device detaches itself once the fs is let go."""
        from stockade import linux

        self._loop = None
        if self.loop() is None:
            return False
        try:
            linux.umount(str(self.mountpoint))
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise StorageError(f"cannot unmount {self.mountpoint}: {e.strerror}") from e
            linux.umount(str(self.mountpoint), linux.MNT_DETACH)
        loopdev.wait_detached(str(self.image))
        return True


def _default_size(where: Path) -> int:
    st = os.statvfs(where)
    return max(MIN_SIZE * 4, st.f_bavail * st.f_frsize // 2)


def parse_size(value: object) -> int | None:
    """The ``quota_fs_size`` option: bytes or a size like '20G'; None when unset."""
    if value is None:
        return None
    from stockade.spec import parse_size as spec_size

    try:
        size = spec_size(value)
    except (ValueError, TypeError) as e:
        raise StorageError(f"option quota_fs_size: {value!r} is not a size ({e})") from e
    if size < MIN_SIZE:
        raise StorageError(f"option quota_fs_size: {value!r} is below {MIN_SIZE >> 20} MiB")
    return size
