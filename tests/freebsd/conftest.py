"""Fixtures for the FreeBSD backend's Linux-side tests: specs, and a fake libc whose functions
are real C function pointers (cffi callbacks) that record their iovecs, set errno and write
the kernel's errmsg - so the error path runs through the real cffi call and errno read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from stockade.spec import InstanceSpec
from stockade_freebsd_jail._ffi import ffi
from stockade_freebsd_jail.iovec import Iovec, read_iovec


def make_spec(**data: Any) -> InstanceSpec:
    return InstanceSpec.from_dict({"name": "web", **data})


@dataclass
class Failure:
    errno: int
    errmsg: str = ""


@dataclass
class FakeLib:
    """libc stand-in: each call is recorded; ``fail[name]`` makes that call fail."""

    fail: dict[str, Failure] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    jid: int = 7
    keep: list[Any] = field(default_factory=list)
    sysctls: dict[str, int] = field(default_factory=dict)  # sysctlbyname answers (else ENOENT)
    racct: str = ""  # what rctl_get_racct/rctl_get_rules write (ERANGE when it does not fit)

    def _cb(self, sig: str, name: str, fn: Callable[..., int]) -> Any:
        f = ffi()

        def wrapper(*args: Any) -> int:
            failure = self.fail.get(name)
            result = fn(*args)
            if failure is None:
                return result
            if failure.errmsg and name in ("jail_set", "jail_get", "nmount"):
                iov, n = args[0], args[1]
                last = iov[n - 1]
                msg = failure.errmsg.encode() + b"\0"
                f.memmove(last.iov_base, msg, min(len(msg), last.iov_len))
            f.errno = failure.errno
            return -1

        cb = f.callback(sig, wrapper)
        self.keep.append(cb)
        return cb

    def __post_init__(self) -> None:
        iov_sig = "int(struct iovec *, unsigned int, int)"
        rctl_sig = "int(const char *, size_t, char *, size_t)"

        def iov_call(name: str) -> Callable[..., int]:
            def call(iov: Any, n: int, flags: int) -> int:
                self.calls.append((name, (read_iovec(Iovec(iov, n)), flags)))
                return self.jid if name.startswith("jail") else 0

            return call

        def rctl_call(name: str) -> Callable[..., int]:
            def call(inp: Any, inlen: int, out: Any, outlen: int) -> int:
                self.calls.append((name, (bytes(ffi().buffer(inp, inlen)), outlen)))
                if name.startswith("rctl_get"):
                    text = self.racct.encode() + b"\0"
                    if len(text) > outlen:
                        ffi().errno = 34  # ERANGE, as the kernel answers a short buffer
                        return -1
                    ffi().memmove(out, text, len(text))
                return 0

            return call

        for name in ("jail_set", "jail_get", "nmount"):
            setattr(self, name, self._cb(iov_sig, name, iov_call(name)))
        for name in ("rctl_add_rule", "rctl_remove_rule", "rctl_get_racct", "rctl_get_rules"):
            setattr(self, name, self._cb(rctl_sig, name, rctl_call(name)))

        def one(name: str) -> Callable[..., int]:
            def call(arg: Any) -> int:
                self.calls.append((name, arg))
                return 0

            return call

        self.jail_attach = self._cb("int(int)", "jail_attach", one("jail_attach"))
        self.jail_remove = self._cb("int(int)", "jail_remove", one("jail_remove"))

        def unmount(path: Any, flags: int) -> int:
            self.calls.append(("unmount", (ffi().string(path).decode(), flags)))
            return 0

        self.unmount = self._cb("int(const char *, int)", "unmount", unmount)

        def setloginclass(name: Any) -> int:
            self.calls.append(("setloginclass", ffi().string(name).decode()))
            return 0

        self.setloginclass = self._cb("int(const char *)", "setloginclass", setloginclass)

        def sysctlbyname(name: Any, old: Any, oldlen: Any, new: Any, newlen: int) -> int:
            key = ffi().string(name).decode()
            self.calls.append(("sysctlbyname", key))
            if key not in self.sysctls:
                ffi().errno = 2  # ENOENT: no such sysctl
                return -1
            assert oldlen[0] == 4  # an int, as the caller says
            ffi().cast("int *", old)[0] = self.sysctls[key]
            return 0

        self.sysctlbyname = self._cb(
            "int(const char *, void *, size_t *, const void *, size_t)", "sysctlbyname", sysctlbyname
        )


@pytest.fixture
def fake_lib() -> FakeLib:
    return FakeLib()
