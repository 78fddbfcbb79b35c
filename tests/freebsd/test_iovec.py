"""spec -> iovec, byte-exact, in real cffi ``struct iovec`` buffers (no library loaded)."""

from __future__ import annotations

import ipaddress
import struct

from stockade_freebsd_jail._ffi import JAIL_ERRMSGLEN, ffi
from stockade_freebsd_jail.iovec import OutBuffer, bool_name, build_iovec, encode_pairs, read_iovec


def test_iovec_layout_matches_freebsd_amd64() -> None:
    # struct iovec { void *iov_base; size_t iov_len; } is 16 bytes on FreeBSD amd64/arm64 too
    assert ffi().sizeof("struct iovec") == 16
    assert ffi().offsetof("struct iovec", "iov_len") == 8


def test_bool_names_use_the_no_prefix_for_false() -> None:
    assert bool_name("persist", True) == "persist"
    assert bool_name("persist", False) == "nopersist"
    assert bool_name("allow.raw_sockets", False) == "allow.noraw_sockets"
    assert bool_name("allow.mount.nullfs", False) == "allow.mount.nonullfs"


def test_encode_pairs_golden() -> None:
    v4 = (ipaddress.IPv4Address("192.0.2.10"), ipaddress.IPv4Address("192.0.2.11"))
    v6 = (ipaddress.IPv6Address("2001:db8::1"),)
    pairs = encode_pairs(
        [
            ("name", "web"),
            ("persist", True),
            ("allow.raw_sockets", False),
            ("securelevel", 2),
            ("devfs_ruleset", -1),
            ("ip4.addr", v4),
            ("ip6.addr", v6),
        ]
    )
    assert pairs == [
        (b"name\0", b"web\0"),
        (b"persist\0", None),
        (b"allow.noraw_sockets\0", None),
        (b"securelevel\0", struct.pack("=i", 2)),
        (b"devfs_ruleset\0", b"\xff\xff\xff\xff"),
        (b"ip4.addr\0", bytes([192, 0, 2, 10, 192, 0, 2, 11])),
        (b"ip6.addr\0", bytes.fromhex("20010db8000000000000000000000001")),
    ]


def test_real_iovec_buffers() -> None:
    f = ffi()
    iov = build_iovec([("name", "web"), ("persist", True), ("allow.mount", False), ("enforce_statfs", 2)])
    assert iov.count == 10  # 4 pairs + errmsg, as name/value iovecs: always even
    arr = iov.array
    # name: NUL-terminated, length counts the NUL
    assert arr[0].iov_len == 5 and f.string(f.cast("char *", arr[0].iov_base)) == b"name"
    assert arr[1].iov_len == 4 and bytes(f.buffer(arr[1].iov_base, 4)) == b"web\0"
    # booleans: the value iovec is (NULL, 0)
    assert arr[3].iov_base == f.NULL and arr[3].iov_len == 0
    assert bytes(f.buffer(arr[4].iov_base, arr[4].iov_len)) == b"allow.nomount\0"
    assert arr[5].iov_base == f.NULL and arr[5].iov_len == 0
    # ints: exactly 4 native bytes
    assert arr[7].iov_len == 4 and f.cast("int *", arr[7].iov_base)[0] == 2
    # errmsg last, a writable 1024-byte buffer, empty
    assert bytes(f.buffer(arr[8].iov_base, arr[8].iov_len)) == b"errmsg\0"
    assert arr[9].iov_len == JAIL_ERRMSGLEN == 1024
    assert iov.errmsg() == ""
    assert read_iovec(iov)[-1] == (b"errmsg\0", bytes(1024))


def test_out_buffers_for_jail_get() -> None:
    iov = build_iovec([("lastjid", 0), ("jid", OutBuffer()), ("name", OutBuffer(256, False))])
    f = ffi()
    assert iov.array[3].iov_len == 4 and iov.array[5].iov_len == 256
    f.cast("int *", iov.buffers["jid"])[0] = 42
    f.memmove(iov.buffers["name"], b"stockade-x-web\0", 15)
    assert iov.out_int("jid") == 42
    assert iov.out_str("name") == "stockade-x-web"


def test_without_errmsg() -> None:
    iov = build_iovec([("fstype", "devfs")], errmsg=False)
    assert read_iovec(iov) == [(b"fstype\0", b"devfs\0")]
