"""jail(2)/nmount(2) name/value pairs: typed values -> exact bytes -> real ``struct iovec`` arrays.

The kernel's conventions (kern_jail.c, vfs_mount.c): names and string values are
NUL-terminated with the NUL counted in ``iov_len``; integers are exactly 4 bytes in
native order; booleans are the bare name with ``(NULL, 0)`` - the value is ignored, so
false is spelled with a ``no`` prefix (``allow.noraw_sockets``, ``nopersist``);
``ip4.addr``/``ip6.addr`` are packed ``in_addr``/``in6_addr`` arrays; ``errmsg`` with a
writable 1024-byte buffer goes last so the kernel can say what it refused.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._ffi import JAIL_ERRMSGLEN, ffi


@dataclass(frozen=True)
class OutBuffer:
    """A value the kernel fills (jail_get): ``size`` bytes, or a 4-byte int when ``integer``."""

    size: int = 4
    integer: bool = True


IPv4List = tuple[ipaddress.IPv4Address, ...]
IPv6List = tuple[ipaddress.IPv6Address, ...]
Value = bool | int | str | IPv4List | IPv6List | OutBuffer
Params = list[tuple[str, Value]]


def bool_name(name: str, value: bool) -> str:
    """'allow.raw_sockets', False -> 'allow.noraw_sockets' (libjail's spelling of false)."""
    if value:
        return name
    head, dot, last = name.rpartition(".")
    return f"{head}{dot}no{last}"


def cstr(s: str) -> bytes:
    b = s.encode()
    if b"\0" in b:
        raise ValueError(f"{s!r} contains NUL")
    return b + b"\0"


def encode_value(value: Value) -> bytes | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return struct.pack("=i", value)
    if isinstance(value, str):
        return cstr(value)
    if isinstance(value, OutBuffer):
        return bytes(value.size)
    if isinstance(value, tuple):
        return b"".join(a.packed for a in value)
    raise TypeError(f"cannot encode {value!r} as a jail parameter")


def encode_pairs(params: Iterable[tuple[str, Value]]) -> list[tuple[bytes, bytes | None]]:
    """Params -> (name bytes incl. NUL, value bytes or None for a boolean), in order."""
    out: list[tuple[bytes, bytes | None]] = []
    for name, value in params:
        if isinstance(value, bool):
            out.append((cstr(bool_name(name, value)), None))
        else:
            out.append((cstr(name), encode_value(value)))
    return out


@dataclass
class Iovec:
    """A ``struct iovec[]`` whose buffers stay alive as long as this object."""

    array: Any
    count: int
    buffers: dict[str, Any] = field(default_factory=dict)  # name -> value buffer (outputs, errmsg)
    keep: list[Any] = field(default_factory=list)

    def errmsg(self) -> str:
        buf = self.buffers.get("errmsg")
        return "" if buf is None else bytes(ffi().string(buf)).decode(errors="replace")

    def out_int(self, name: str) -> int:
        return int(ffi().cast("int *", self.buffers[name])[0])

    def out_str(self, name: str) -> str:
        return bytes(ffi().string(ffi().cast("char *", self.buffers[name]))).decode(errors="replace")


def build_iovec(params: Sequence[tuple[str, Value]], errmsg: bool = True) -> Iovec:
    """Real cffi buffers for the pairs, plus ``errmsg`` last when asked."""
    f = ffi()
    pairs = encode_pairs(params)
    n = 2 * (len(pairs) + (1 if errmsg else 0))
    arr = f.new("struct iovec[]", n)
    iov = Iovec(arr, n)
    for i, ((name_b, value_b), (name, value)) in enumerate(zip(pairs, params, strict=True)):
        name_buf = f.new("char[]", name_b)
        iov.keep.append(name_buf)
        arr[2 * i].iov_base = name_buf
        arr[2 * i].iov_len = len(name_b)
        if value_b is None:
            arr[2 * i + 1].iov_base = f.NULL
            arr[2 * i + 1].iov_len = 0
            continue
        value_buf = f.new("char[]", value_b) if value_b else f.new("char[]", 1)
        iov.keep.append(value_buf)
        if isinstance(value, OutBuffer):
            iov.buffers[name] = value_buf
        arr[2 * i + 1].iov_base = value_buf
        arr[2 * i + 1].iov_len = len(value_b)
    if errmsg:
        name_buf = f.new("char[]", b"errmsg\0")
        msg_buf = f.new("char[]", JAIL_ERRMSGLEN)
        iov.keep += [name_buf, msg_buf]
        iov.buffers["errmsg"] = msg_buf
        arr[n - 2].iov_base = name_buf
        arr[n - 2].iov_len = 7
        arr[n - 1].iov_base = msg_buf
        arr[n - 1].iov_len = JAIL_ERRMSGLEN
    return iov


def read_iovec(iov: Iovec) -> list[tuple[bytes, bytes | None]]:
    """The (name, value) bytes an iovec array holds; None where iov_base is NULL. For tests/debug."""
    f = ffi()
    out: list[tuple[bytes, bytes | None]] = []
    for i in range(0, iov.count, 2):
        name = bytes(f.buffer(iov.array[i].iov_base, iov.array[i].iov_len))
        v = iov.array[i + 1]
        out.append((name, None if v.iov_base == f.NULL else bytes(f.buffer(v.iov_base, v.iov_len))))
    return out
