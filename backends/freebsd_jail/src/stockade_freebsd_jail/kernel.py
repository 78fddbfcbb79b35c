"""The thin layer over libc's jail, nmount, rctl and sysctl calls.

``Kernel`` takes any object with the C functions as attributes (the real libc on
FreeBSD; cffi callbacks in tests), reads ``ffi.errno`` right after each call and hands
it, with the kernel's errmsg, to that operation's translator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stockade.errors import NotFound, StockadeError

from . import errnos
from ._ffi import JAIL_CREATE, MAXHOSTNAMELEN, MAXPATHLEN, ffi, libc
from .iovec import OutBuffer, Params, build_iovec
from .naming import JAIL_PREFIX


@dataclass(frozen=True)
class JailInfo:
    jid: int
    name: str
    path: str


class Kernel:
    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.ffi = ffi()

    @classmethod
    def system(cls) -> Kernel:
        return cls(libc())

    # --- jails ------------------------------------------------------------------------------

    def jail_set(self, params: Params, flags: int, jail: str) -> int:
        iov = build_iovec(params)
        jid = int(self.lib.jail_set(iov.array, iov.count, flags))
        if jid < 0:
            raise errnos.jail_set_error(self.ffi.errno, iov.errmsg(), jail, bool(flags & JAIL_CREATE))
        return jid

    def find(self, name: str) -> int | None:
        """The jid of the live jail called ``name``, or None."""
        iov = build_iovec([("name", name)])
        jid = int(self.lib.jail_get(iov.array, iov.count, 0))
        if jid >= 0:
            return jid
        err = errnos.jail_get_error(self.ffi.errno, iov.errmsg(), name)
        if isinstance(err, NotFound):
            return None
        raise err

    def list_jails(self, prefix: str = JAIL_PREFIX) -> list[JailInfo]:
        """Live jails whose name starts with ``prefix`` (jail_get with lastjid, until ENOENT)."""
        out: list[JailInfo] = []
        last = 0
        while True:
            iov = build_iovec(
                [
                    ("lastjid", last),
                    ("jid", OutBuffer()),
                    ("name", OutBuffer(MAXHOSTNAMELEN, integer=False)),
                    ("path", OutBuffer(MAXPATHLEN, integer=False)),
                ]
            )
            jid = int(self.lib.jail_get(iov.array, iov.count, 0))
            if jid < 0:
                err = errnos.jail_get_error(self.ffi.errno, iov.errmsg(), f"after jid {last}")
                if isinstance(err, NotFound):
                    return out
                raise err
            name = iov.out_str("name")
            if name.startswith(prefix):
                out.append(JailInfo(jid, name, iov.out_str("path")))
            last = jid

    def jail_attach(self, jid: int) -> None:
        if self.lib.jail_attach(jid) != 0:
            raise errnos.jail_attach_error(self.ffi.errno, jid)

    def jail_remove(self, jid: int) -> bool:
        """Remove a jail and kill its processes; False if it was already gone."""
        if self.lib.jail_remove(jid) == 0:
            return True
        err = errnos.jail_remove_error(self.ffi.errno, jid)
        if isinstance(err, NotFound):
            return False
        raise err

    def setloginclass(self, name: str) -> None:
        """Set the calling process's login class (the forked helper, inside the jail)."""
        if self.lib.setloginclass(name.encode()) != 0:
            raise errnos.setloginclass_error(self.ffi.errno, name)

    # --- mounts -----------------------------------------------------------------------------

    def nmount(self, params: Params, flags: int) -> None:
        iov = build_iovec(params)
        if self.lib.nmount(iov.array, iov.count, flags) != 0:
            values = dict(params)
            raise errnos.nmount_error(
                self.ffi.errno, iov.errmsg(), str(values.get("fstype")), str(values.get("fspath"))
            )

    def unmount(self, path: str, flags: int = 0) -> bool:
        """Unmount ``path``; False if nothing was mounted there (EINVAL/ENOENT)."""
        if self.lib.unmount(path.encode(), flags) == 0:
            return True
        native = self.ffi.errno
        if errnos.name_of(native) in ("EINVAL", "ENOENT"):
            return False
        raise errnos.unmount_error(native, path)

    # --- rctl -------------------------------------------------------------------------------

    def _rctl(self, op: str, text: str, outlen: int = 0) -> str:
        fn = getattr(self.lib, f"rctl_{op}")
        inbuf = text.encode() + b"\0"
        while True:
            out = self.ffi.new("char[]", max(outlen, 1))
            if fn(inbuf, len(inbuf), out if outlen else self.ffi.NULL, outlen) == 0:
                return bytes(self.ffi.string(out)).decode() if outlen else ""
            native = self.ffi.errno
            if errnos.name_of(native) == "ERANGE" and outlen and outlen < 1 << 24:
                outlen *= 4  # the answer did not fit: ask again with more room
                continue
            raise errnos.rctl_error(native, op.replace("_", " "), text)

    def rctl_add(self, rule: str) -> None:
        self._rctl("add_rule", rule)

    def rctl_remove(self, rule_filter: str) -> bool:
        """Remove matching rules; False when there were none (ESRCH)."""
        try:
            self._rctl("remove_rule", rule_filter)
        except NotFound:
            return False
        return True

    def rctl_racct(self, subject: str) -> str:
        return self._rctl("get_racct", subject, 4096)

    def rctl_rules(self, rule_filter: str) -> str:
        return self._rctl("get_rules", rule_filter, 16384)

    # --- sysctl -----------------------------------------------------------------------------

    def sysctl_int(self, name: str) -> int:
        value = self.ffi.new("int *")
        size = self.ffi.new("size_t *", self.ffi.sizeof("int"))
        if self.lib.sysctlbyname(name.encode(), value, size, self.ffi.NULL, 0) != 0:
            raise errnos.sysctl_error(self.ffi.errno, name)
        return int(value[0])


def racct_enabled(kernel: Kernel) -> tuple[bool, str]:
    """Whether rctl works here, and why not (kern.racct.enable is a boot tunable)."""
    try:
        enabled = kernel.sysctl_int("kern.racct.enable")
    except StockadeError as e:
        return False, f"the kernel has no RACCT ({e}); it needs options RACCT and RCTL"
    if not enabled:
        return False, ("kern.racct.enable is 0: set kern.racct.enable=1 in /boot/loader.conf and reboot")
    return True, ""
