"""Lazy loading of libzfs_core, libzfs and libnvpair through cffi (ABI mode, no compiler).

Nothing is loaded at import: the first call to :func:`lib` dlopens the three libraries,
calls ``libzfs_core_init`` once and opens one libzfs handle for the process (both are
process-wide in OpenZFS and cheap to keep). A missing library raises
:class:`LibraryMissing` with one line that says which.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any

# Sonames by platform, newest first. Linux: Debian/Ubuntu's libzfs4linux (2.1), libzfs5linux
# (2.2), libzfs6linux (2.3); FreeBSD: the base system's libraries in /lib.
_SONAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "linux": {
        "zfs_core": ("libzfs_core.so.3", "libzfs_core.so"),
        "zfs": ("libzfs.so.6", "libzfs.so.5", "libzfs.so.4", "libzfs.so"),
        "nvpair": ("libnvpair.so.3", "libnvpair.so"),
    },
    "freebsd": {
        "zfs_core": ("libzfs_core.so.2", "libzfs_core.so"),
        "zfs": ("libzfs.so.4", "libzfs.so"),
        "nvpair": ("libnvpair.so.2", "libnvpair.so"),
    },
}


class LibraryMissing(Exception):
    pass


@dataclass(frozen=True)
class Libs:
    ffi: Any
    core: Any  # libzfs_core
    zfs: Any  # libzfs
    nvpair: Any
    handle: Any  # libzfs_handle_t *, process-wide


_lock = threading.Lock()
_loaded: list[Libs] = []  # at most one: the process-wide libraries


def platform_key() -> str:
    return "freebsd" if sys.platform.startswith("freebsd") else "linux"


def _dlopen(ffi: Any, what: str) -> Any:
    names = _SONAMES[platform_key()][what]
    errors: list[str] = []
    for name in names:
        try:
            return ffi.dlopen(name)
        except OSError as e:
            errors.append(str(e))
    raise LibraryMissing(
        f"lib{what} not loadable ({' or '.join(names)}): install zfsutils-linux (Debian contrib) or OpenZFS"
    )


def lib() -> Libs:
    """The loaded libraries; loads them on first use. Raises LibraryMissing."""
    if _loaded:
        return _loaded[0]
    with _lock:
        if _loaded:
            return _loaded[0]
        try:
            import cffi  # type: ignore[import-untyped]
        except ImportError as e:
            raise LibraryMissing("the cffi module is missing: install python3-cffi") from e
        from ._cdef import CDEF

        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        nvpair = _dlopen(ffi, "nvpair")
        core = _dlopen(ffi, "zfs_core")
        zfs = _dlopen(ffi, "zfs")
        rc = core.libzfs_core_init()
        if rc != 0:
            raise LibraryMissing(
                f"libzfs_core_init failed (errno {rc}): is /dev/zfs there and the zfs module loaded?"
            )
        handle = zfs.libzfs_init()
        if handle == ffi.NULL:
            raise LibraryMissing("libzfs_init failed: is the zfs kernel module loaded?")
        zfs.libzfs_print_on_error(handle, 0)
        _loaded.append(Libs(ffi=ffi, core=core, zfs=zfs, nvpair=nvpair, handle=handle))
        return _loaded[0]


def loadable() -> str | None:
    """None if the libraries can be dlopened here, else why not (one line). Does not init."""
    try:
        import cffi
    except ImportError:
        return "the cffi module is missing: install python3-cffi"
    ffi = cffi.FFI()
    try:
        for what in ("nvpair", "zfs_core", "zfs"):
            _dlopen(ffi, what)
    except LibraryMissing as e:
        return str(e)
    return None
