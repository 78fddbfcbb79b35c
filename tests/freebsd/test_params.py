"""spec -> jail_set parameters (golden), restrictions mapping, and the kernel-rule preflight."""

from __future__ import annotations

import ipaddress

import pytest
from stockade.features import Restriction as R
from stockade_freebsd_jail._ffi import JAIL_ATTACH, JAIL_CREATE, JAIL_UPDATE
from stockade_freebsd_jail.iovec import build_iovec, read_iovec
from stockade_freebsd_jail.network import plan_network
from stockade_freebsd_jail.options import JailOptions
from stockade_freebsd_jail.params import jail_params, preflight
from stockade_freebsd_jail.restrictions import (
    ENFORCED,
    NOT_ENFORCED,
    NOT_RELAXABLE,
    RELAXABLE,
    unrelaxable,
)

from .conftest import make_spec

BASE_ALLOW = [
    ("allow.set_hostname", False),
    ("allow.sysvipc", False),
    ("allow.raw_sockets", False),
    ("allow.chflags", False),
    ("allow.mount", False),
    ("allow.quotas", False),
    ("allow.socket_af", False),
    ("allow.mlock", False),
    ("allow.reserved_ports", True),
    ("allow.read_msgbuf", False),
    ("allow.unprivileged_proc_debug", False),
    ("allow.suser", True),
]


def params_for(spec_data: dict[str, object], **kw: object):  # type: ignore[no-untyped-def]
    spec = make_spec(**spec_data)
    net = plan_network(spec, host_tag="t1", instance_id="web", jail="stockade-t1-web")
    return jail_params(spec, name="stockade-t1-web", path="/var/lib/stockade/r/web", network=net.params, **kw)  # type: ignore[arg-type]


def test_default_jail_params_golden() -> None:
    assert params_for({"hostname": "box"}) == [
        ("name", "stockade-t1-web"),
        ("path", "/var/lib/stockade/r/web"),
        ("host.hostname", "box"),
        ("persist", True),
        ("securelevel", 2),
        ("enforce_statfs", 2),
        ("children.max", 0),
        ("devfs_ruleset", 5),  # loopback mode is a vnet jail: devfsrules_jail_vnet
        ("sysvmsg", 1),
        ("sysvsem", 1),
        ("sysvshm", 1),
        ("vnet", 1),
        *BASE_ALLOW,
    ]


def test_default_wire_bytes() -> None:
    wire = read_iovec(build_iovec(params_for({"network": {"mode": "none"}})))
    assert wire[:4] == [
        (b"name\0", b"stockade-t1-web\0"),
        (b"path\0", b"/var/lib/stockade/r/web\0"),
        (b"host.hostname\0", b"web\0"),  # the spec's name when no hostname is given
        (b"persist\0", None),
    ]
    assert (b"devfs_ruleset\0", (4).to_bytes(4, "little")) in wire  # ruleset 4 without vnet
    assert (b"ip4\0", bytes(4)) in wire and (b"ip6\0", bytes(4)) in wire  # disabled
    assert (b"allow.noraw_sockets\0", None) in wire
    assert (b"allow.suser\0", None) in wire
    assert not any(
        n.startswith(b"allow.") and n[6:8] != b"no" and n not in (b"allow.suser\0", b"allow.reserved_ports\0")
        for n, _ in wire
    )
    assert wire[-1][0] == b"errmsg\0"


def test_relaxations_map_to_allow_params() -> None:
    p = dict(
        params_for({"allow": ["mount", "raw_sockets", "chflags", "sys_time"], "network": {"mode": "none"}})
    )
    assert p["allow.mount"] is True and p["allow.mount.nullfs"] is True
    assert p["allow.mount.tmpfs"] is True
    assert p["enforce_statfs"] == 1  # mounting inside needs < 2
    assert p["allow.raw_sockets"] is True and p["allow.chflags"] is True
    assert p["allow.settime"] is True and p["allow.adjtime"] is True
    assert p["securelevel"] == 0  # chflags needs securelevel 0 to touch schg/sappnd


def test_securelevel_option_and_caps() -> None:
    assert dict(params_for({}, opts=JailOptions(securelevel=3)))["securelevel"] == 3
    assert dict(params_for({"allow": ["sys_time"]}))["securelevel"] == 1


def test_foreign_network_inherits_the_host_stack() -> None:
    p = params_for({"allow": ["foreign_network"]})
    assert ("ip4", 2) in p and ("ip6", 2) in p and ("vnet", 1) not in p


def test_declared_restrictions_are_consistent() -> None:
    assert RELAXABLE <= ENFORCED
    assert set(R) == ENFORCED | NOT_ENFORCED.keys()
    assert NOT_RELAXABLE.keys() == ENFORCED - RELAXABLE
    lines = unrelaxable({R.KMOD, R.KERNEL_MODIFY, R.MOUNT, R.NET_ADMIN})
    assert len(lines) == 2 and all("cannot be relaxed" in x for x in lines)


def test_preflight_accepts_what_the_backend_builds() -> None:
    assert preflight(params_for({}), JAIL_CREATE) == []
    assert preflight(params_for({"network": {"mode": "none"}}), JAIL_CREATE) == []


def test_preflight_reports_every_problem_at_once() -> None:
    v4 = ipaddress.IPv4Address
    params = [
        ("name", "123"),
        ("host.hostname", "h" * 256),
        ("enforce_statfs", 3),
        ("devfs_ruleset", 70000),
        ("vnet", 1),
        ("ip4.addr", (v4("0.0.0.0"), v4("255.255.255.255"), v4("192.0.2.1"), v4("192.0.2.1"))),
        ("allow.mount", True),
        ("allow.mount", False),
    ]
    problems = preflight(params, JAIL_CREATE)
    text = "\n".join(problems)
    for needle in (
        "persist: a new jail must persist or attach",
        "path: must always be sent",
        "name: '123' is numeric",
        "host.hostname: 257 bytes",
        "enforce_statfs: 3 is out of range (0..2)",
        "devfs_ruleset: 70000 is out of range (0..65535)",
        "0.0.0.0 (the wildcard address)",
        "255.255.255.255 (the broadcast address)",
        "192.0.2.1 is listed twice",
        "vnet jails cannot have IP address restrictions",
        "allow.mount: sent both as 'allow.mount' and 'allow.nomount'",
    ):
        assert needle in text, needle
    assert len(problems) == 11


def test_preflight_lengths_and_counts() -> None:
    ok_name = "n" * 255  # 256 bytes with the NUL: the limit
    assert preflight([("name", ok_name), ("path", "/" + "p" * 1022), ("persist", True)], JAIL_CREATE) == []
    problems = preflight(
        [("name", ok_name + "n"), ("path", "/" + "p" * 1023), ("persist", True)], JAIL_CREATE
    )
    assert problems == [
        "name: 257 bytes with its NUL; the kernel allows 256 (ENAMETOOLONG)",
        "path: 1025 bytes with its NUL; the kernel allows 1024 (ENAMETOOLONG)",
    ]
    many = tuple(ipaddress.IPv4Address(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(256))
    assert any(
        "256 addresses; the kernel allows 255" in p
        for p in preflight([("name", "a"), ("path", "/"), ("persist", True), ("ip4.addr", many)], JAIL_CREATE)
    )


@pytest.mark.parametrize(
    ("flags", "persist", "ok"),
    [
        (JAIL_CREATE, True, True),
        (JAIL_CREATE, False, False),
        (JAIL_CREATE | JAIL_ATTACH, False, True),
        (JAIL_UPDATE, False, True),
    ],
)
def test_persist_or_attach(flags: int, persist: bool, ok: bool) -> None:
    problems = preflight([("name", "a"), ("path", "/j"), ("persist", persist)], flags)
    assert (problems == []) is ok


def test_preflight_refuses_dotted_names_and_relative_paths() -> None:
    problems = preflight([("name", "a.b"), ("path", "j"), ("persist", True)], JAIL_CREATE)
    assert any("names a child" in p for p in problems)
    assert any("must be absolute" in p for p in problems)


def _diff(allow: list[str]) -> dict[str, object]:
    """The parameters a relaxation changes or adds, relative to the default jail."""
    base = dict(params_for({"network": {"mode": "none"}}))
    relaxed = params_for({"allow": allow, "network": {"mode": "none"}})
    return {n: v for n, v in relaxed if base.get(n, "absent") != v}


# restriction -> the jail parameters relaxing it changes (empty: no allow.* grants it)
MAPPING: list[tuple[str, dict[str, object]]] = [
    (
        "mount",
        {"allow.mount": True, "allow.mount.nullfs": True, "allow.mount.tmpfs": True, "enforce_statfs": 1},
    ),
    ("raw_sockets", {"allow.raw_sockets": True}),
    ("chflags", {"allow.chflags": True, "securelevel": 0}),
    ("sys_time", {"allow.settime": True, "allow.adjtime": True, "securelevel": 1}),
    ("foreign_network", {"ip4": 2, "ip6": 2}),  # the host's stack instead of none
    # enforced whatever the spec says: no allow.* exists for them, so nothing changes
    ("kmod", {}),
    ("kernel_modify", {}),
    ("mknod", {}),
    ("sysctl", {}),
    ("host_processes", {}),
    ("keyring", {}),
    ("new_userns", {}),
    # not enforced by a jail (documented), so relaxing them changes nothing either
    ("net_admin", {}),
    ("ptrace", {}),
]


@pytest.mark.parametrize(("restriction", "changed"), MAPPING)
def test_each_restriction_maps_to_exactly_these_params(restriction: str, changed: dict[str, object]) -> None:
    assert _diff([restriction]) == changed
    r = R(restriction)
    assert (r in RELAXABLE) == bool(changed)
    assert (r in NOT_RELAXABLE) == (r in ENFORCED and not changed)


def test_every_restriction_is_in_the_mapping_table() -> None:
    assert sorted(r for r, _ in MAPPING) == sorted(r.value for r in R)


def test_path_is_always_sent_and_never_root_by_accident() -> None:
    for mode in ("none", "loopback", "host"):
        p = params_for({"network": {"mode": mode}})
        assert p[1] == ("path", "/var/lib/stockade/r/web")
    assert any(
        "path: must always be sent" in x for x in preflight([("name", "a"), ("persist", True)], JAIL_CREATE)
    )
