"""Network plans: jail parameters and ifconfig/route argv, golden; interface names < 16."""

from __future__ import annotations

import ipaddress

from stockade_freebsd_jail.naming import bridge_name, epair_names, epair_prefix, jail_name
from stockade_freebsd_jail.network import Step, plan_network, substitute

from .conftest import make_spec

HOST_END, JAIL_END = epair_names("t1", "web")
BRIDGE = bridge_name("t1", "default")


def plan(**network: object):  # type: ignore[no-untyped-def]
    spec = make_spec(network=network)
    return plan_network(spec, host_tag="t1", instance_id="web", jail="stockade-t1-web")


def test_names_fit_ifnamsiz_and_are_stable() -> None:
    for name in (HOST_END, JAIL_END, BRIDGE):
        assert len(name) < 16 and name.startswith("stk")
    assert len(HOST_END) == 15
    assert epair_names("t1", "web") == (HOST_END, JAIL_END)
    assert HOST_END.startswith(epair_prefix("t1")) and not HOST_END.startswith(epair_prefix("t2"))
    assert epair_names("t1", "web") != epair_names("t1", "db")
    assert jail_name("t1", "my.app:1") == "stockade-t1-my_app_1"


def test_none_and_host_modes() -> None:
    assert plan(mode="none").params == [("ip4", 0), ("ip6", 0)]
    host = plan(mode="host")
    assert host.kind == "inherit" and host.params == [("ip4", 2), ("ip6", 2)]
    assert host.host_setup == () and host.teardown == ()


def test_loopback_is_a_vnet_jail_with_lo0_only() -> None:
    p = plan(mode="loopback")
    assert p.params == [("vnet", 1)] and p.host_setup == ()
    assert p.jail_setup == (Step(("ifconfig", "lo0", "inet", "127.0.0.1/8", "up"), "jail"),)


def test_vnet_bridge_plan_golden() -> None:
    p = plan(mode="bridge", ipv4="10.88.0.5", mtu=1400, dns=["10.88.0.1"])
    assert p.kind == "vnet" and p.params == [("vnet", 1)] and p.problems == ()
    assert [s.argv for s in p.host_setup] == [
        ("ifconfig", "epair", "create"),
        ("ifconfig", "{epair}a", "name", HOST_END),
        ("ifconfig", "{epair}b", "name", JAIL_END),
        ("ifconfig", "bridge", "create", "name", BRIDGE),
        ("ifconfig", BRIDGE, "inet", "10.88.0.1/24", "up"),
        ("ifconfig", BRIDGE, "addm", HOST_END, "up"),
        ("ifconfig", HOST_END, "mtu", "1400", "up"),
        ("ifconfig", JAIL_END, "vnet", "stockade-t1-web"),
    ]
    assert p.host_setup[0].capture == "epair" and p.host_setup[0].strip_suffix == "a"
    assert p.host_setup[3].only_if_missing == BRIDGE
    assert all(s.where == "host" for s in p.host_setup)
    assert [s.argv for s in p.jail_setup] == [
        ("ifconfig", "lo0", "inet", "127.0.0.1/8", "up"),
        ("ifconfig", JAIL_END, "inet", "10.88.0.5/24", "mtu", "1400", "up"),
        ("route", "add", "default", "10.88.0.1"),
    ]
    assert all(s.where == "jail" for s in p.jail_setup)
    assert [s.argv for s in p.teardown] == [("ifconfig", HOST_END, "destroy")]
    assert not p.teardown[0].check
    assert p.interfaces == (HOST_END, JAIL_END)
    assert p.resolv_conf == "nameserver 10.88.0.1\n"
    assert substitute(p.host_setup[1].argv, {"epair": "epair3"}) == ("ifconfig", "epair3a", "name", HOST_END)


def test_vnet_with_ipv6() -> None:
    p = plan(mode="bridge", ipv4="10.88.0.5", ipv6="fd00::5")
    assert ("ifconfig", JAIL_END, "inet6", "fd00::5/64") in [s.argv for s in p.jail_setup]


def test_address_restricted_plan_golden() -> None:
    spec = make_spec(network={"mode": "bridge", "ipv4": "192.0.2.10", "ipv6": "2001:db8::10"})
    p = plan_network(spec, host_tag="t1", instance_id="web", jail="j", stack="ip", interface="lo1")
    assert p.kind == "ip"
    assert p.params == [
        ("ip4.addr", (ipaddress.IPv4Address("192.0.2.10"),)),
        ("ip6.addr", (ipaddress.IPv6Address("2001:db8::10"),)),
    ]
    assert [s.argv for s in p.host_setup] == [
        ("ifconfig", "lo1", "inet", "192.0.2.10/32", "alias"),
        ("ifconfig", "lo1", "inet6", "2001:db8::10/128", "alias"),
    ]
    assert [s.argv for s in p.teardown] == [
        ("ifconfig", "lo1", "inet", "192.0.2.10", "-alias"),
        ("ifconfig", "lo1", "inet6", "2001:db8::10", "-alias"),
    ]
    v4_only = plan_network(
        make_spec(network={"mode": "bridge", "ipv4": "192.0.2.10"}),
        host_tag="t1",
        instance_id="web",
        jail="j",
        stack="ip",
    )
    assert ("ip6", 0) in v4_only.params


def test_plan_problems() -> None:
    assert any("needs a static address" in x for x in plan(mode="bridge").problems)
    assert any("gateway" in x for x in plan(mode="bridge", ipv4="10.88.0.1").problems)
    published = plan(mode="bridge", ipv4="10.88.0.5", publish=["8080:80"])
    assert any("publish" in x for x in published.problems)
