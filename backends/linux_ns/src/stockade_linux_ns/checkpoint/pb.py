"""The few protobuf (proto2) messages of CRIU's RPC, encoded by hand.

CRIU's swrk mode speaks protobuf over a SOCK_SEQPACKET socket. The messages stockade
uses are small and stable (images/rpc.proto keeps field numbers forever), so a table
of field numbers and a 60-line wire codec replace a protobuf runtime dependency and
its generated code. Unknown fields in replies are skipped, as protobuf does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Wire kinds: "int" (varint: int32/uint32/bool/enum), "str", "msg:<name>"; a leading "*"
# marks a repeated field.
Schema = Mapping[str, tuple[int, str]]

PAGE_SERVER_INFO: Schema = {"address": (1, "str"), "port": (2, "int"), "pid": (3, "int"), "fd": (4, "int")}
INHERIT_FD: Schema = {"key": (1, "str"), "fd": (2, "int")}
CGROUP_ROOT: Schema = {"ctrl": (1, "str"), "path": (2, "str")}
JOIN_NS: Schema = {"ns": (1, "str"), "ns_file": (2, "str"), "extra_opt": (3, "str")}
FEATURES: Schema = {"mem_track": (1, "int"), "lazy_pages": (2, "int"), "pidfd_store": (3, "int")}

OPTS: Schema = {
    "images_dir_fd": (1, "int"),
    "pid": (2, "int"),
    "leave_running": (3, "int"),
    "ext_unix_sk": (4, "int"),
    "tcp_established": (5, "int"),
    "evasive_devices": (6, "int"),
    "shell_job": (7, "int"),
    "file_locks": (8, "int"),
    "log_level": (9, "int"),
    "log_file": (10, "str"),
    "ps": (11, "msg:ps"),
    "notify_scripts": (12, "int"),
    "root": (13, "str"),
    "parent_img": (14, "str"),
    "track_mem": (15, "int"),
    "work_dir_fd": (17, "int"),
    "link_remap": (18, "int"),
    "manage_cgroups": (24, "int"),
    "cg_root": (25, "*msg:cgroup_root"),
    "rst_sibling": (26, "int"),
    "inherit_fd": (27, "*msg:inherit_fd"),
    "auto_ext_mnt": (28, "int"),
    "ext_sharing": (29, "int"),
    "ext_masters": (30, "int"),
    "skip_mnt": (31, "*str"),
    "enable_fs": (32, "*str"),
    "manage_cgroups_mode": (34, "int"),
    "external": (37, "*str"),
    "empty_ns": (38, "int"),
    "join_ns": (39, "*msg:join_ns"),
    "freeze_cgroup": (44, "str"),
    "timeout": (45, "int"),
    "tcp_skip_in_flight": (46, "int"),
    "weak_sysctls": (47, "int"),
    "lazy_pages": (48, "int"),
    "status_fd": (49, "int"),
    "orphan_pts_master": (50, "int"),
    "config_file": (51, "str"),
    "tcp_close": (52, "int"),
    "network_lock": (64, "int"),
    "skip_file_rwx_check": (66, "int"),
    "images_dir": (68, "str"),
    "leave_stopped": (69, "int"),
    "display_stats": (70, "int"),
}
REQ: Schema = {
    "type": (1, "int"),
    "opts": (2, "msg:opts"),
    "notify_success": (3, "int"),
    "keep_open": (4, "int"),
    "features": (5, "msg:features"),
    "pid": (6, "int"),
}
RESP: Schema = {
    "type": (1, "int"),
    "success": (2, "int"),
    "dump": (3, "msg:dump"),
    "restore": (4, "msg:restore"),
    "notify": (5, "msg:notify"),
    "ps": (6, "msg:ps"),
    "cr_errno": (7, "int"),
    "features": (8, "msg:features"),
    "cr_errmsg": (9, "str"),
    "version": (10, "msg:version"),
    "status": (11, "int"),
}
SCHEMAS: dict[str, Schema] = {
    "ps": PAGE_SERVER_INFO,
    "inherit_fd": INHERIT_FD,
    "cgroup_root": CGROUP_ROOT,
    "join_ns": JOIN_NS,
    "features": FEATURES,
    "opts": OPTS,
    "dump": {"restored": (1, "int")},
    "restore": {"pid": (1, "int")},
    "notify": {"script": (1, "str"), "pid": (2, "int")},
    "version": {
        "major_number": (1, "int"),
        "minor_number": (2, "int"),
        "gitid": (3, "str"),
        "sublevel": (4, "int"),
        "extra": (5, "int"),
        "name": (6, "str"),
    },
}

# criu_req_type
DUMP, RESTORE, CHECK, PRE_DUMP, PAGE_SERVER, NOTIFY = 1, 2, 3, 4, 5, 6
FEATURE_CHECK, VERSION = 9, 10
# One pre-dump, then the session ends: PRE_DUMP instead waits for the next pre-dump or the
# dump on the same socket (criu's pre_dump_loop), and logs an error when it is closed.
SINGLE_PRE_DUMP = 13
# criu_cg_mode
CG_IGNORE, CG_NONE, CG_PROPS, CG_SOFT, CG_FULL, CG_STRICT = 0, 1, 2, 3, 4, 5
# criu_network_lock_method
NETLOCK_IPTABLES, NETLOCK_NFTABLES, NETLOCK_SKIP = 1, 2, 3


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # negative int32s are sign-extended to 10 bytes
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode(schema: Schema, msg: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for name, value in msg.items():
        if value is None:
            continue
        num, kind = schema[name]
        repeated = kind.startswith("*")
        kind = kind.lstrip("*")
        for v in value if repeated else [value]:
            if kind == "int":
                out += _varint(num << 3) + _varint(int(v))
            else:
                data = v.encode() if kind == "str" else encode(SCHEMAS[kind[4:]], v)
                out += _varint(num << 3 | 2) + _varint(len(data)) + data
    return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def decode(schema: Schema, buf: bytes) -> dict[str, Any]:
    by_num = {num: (name, kind) for name, (num, kind) in schema.items()}
    out: dict[str, Any] = {}
    i = 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            raw: int | bytes
            raw, i = _read_varint(buf, i)
            if raw >= 1 << 63:
                raw -= 1 << 64
        elif wire == 2:
            n, i = _read_varint(buf, i)
            raw, i = buf[i : i + n], i + n
        elif wire == 5:
            raw, i = buf[i : i + 4], i + 4
        elif wire == 1:
            raw, i = buf[i : i + 8], i + 8
        else:
            raise ValueError(f"protobuf wire type {wire} not supported")
        if num not in by_num:
            continue
        name, kind = by_num[num]
        repeated = kind.startswith("*")
        kind = kind.lstrip("*")
        value: Any
        if kind == "int":
            value = raw
        elif kind == "str":
            assert isinstance(raw, bytes)
            value = raw.decode(errors="replace")
        else:
            assert isinstance(raw, bytes)
            value = decode(SCHEMAS[kind[4:]], raw)
        if repeated:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out
