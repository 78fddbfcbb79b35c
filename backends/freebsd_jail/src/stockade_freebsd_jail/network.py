"""A spec's network as data: the jail parameters and the ifconfig/route argv plans.

Modes: ``none`` -> ip4/ip6 disabled; ``loopback`` -> a vnet jail with only its own lo0;
``bridge`` -> a vnet jail with an epair whose host end joins a per-network bridge
(``stack = "vnet"``, the default) or an address-restricted jail on the host's stack
(``stack = "ip"``: ``ip4.addr``/``ip6.addr`` plus an alias on a host interface);
``host`` (or ``allow = ["foreign_network"]``) -> ip4/ip6 inherited from the host.
Plans are argv tuples (FreeBSD's ifconfig(8)/route(8)), run on the host or inside the jail.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from stockade.features import Restriction
from stockade.spec import InstanceSpec

from ._ffi import JAIL_SYS_DISABLE, JAIL_SYS_INHERIT, JAIL_SYS_NEW
from .iovec import Params
from .naming import bridge_name, epair_names

Stack = Literal["vnet", "ip"]


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    where: Literal["host", "jail"] = "host"
    capture: str | None = None  # remember stdout (stripped, minus ``strip_suffix``) as {capture}
    strip_suffix: str = ""
    only_if_missing: str | None = None  # run only when this interface does not exist yet
    check: bool = True  # a failure is an error (teardown steps are best effort)


@dataclass(frozen=True)
class NetworkPlan:
    kind: Literal["none", "loopback", "vnet", "ip", "inherit"]
    params: Params
    host_setup: tuple[Step, ...] = ()  # after the jail exists, before anything runs in it
    jail_setup: tuple[Step, ...] = ()  # inside the jail, as its root, before the first process
    teardown: tuple[Step, ...] = ()  # on the host, after jail_remove
    interfaces: tuple[str, ...] = ()  # host interfaces the instance owns (found again by gc)
    resolv_conf: str | None = None
    problems: tuple[str, ...] = field(default=())


def _lo0() -> Step:
    return Step(("ifconfig", "lo0", "inet", "127.0.0.1/8", "up"), where="jail")


def plan_network(
    spec: InstanceSpec,
    *,
    host_tag: str,
    instance_id: str,
    jail: str,
    stack: Stack = "vnet",
    prefixlen: int = 24,
    gateway: str | None = None,
    interface: str = "lo0",
) -> NetworkPlan:
    net = spec.network
    resolv = "".join(f"nameserver {d}\n" for d in net.dns) or None
    problems: list[str] = []
    if net.publish:
        problems.append(
            "network.publish: port publishing is not implemented for FreeBSD jails (it needs pf rdr rules)"
        )
    if net.mode == "host" or Restriction.FOREIGN_NETWORK in spec.allow:
        return NetworkPlan(
            "inherit",
            [("ip4", JAIL_SYS_INHERIT), ("ip6", JAIL_SYS_INHERIT)],
            resolv_conf=resolv,
            problems=tuple(problems),
        )
    if net.mode == "none":
        return NetworkPlan(
            "none", [("ip4", JAIL_SYS_DISABLE), ("ip6", JAIL_SYS_DISABLE)], problems=tuple(problems)
        )
    if net.mode == "loopback":
        return NetworkPlan(
            "loopback",
            [("vnet", JAIL_SYS_NEW)],
            jail_setup=(_lo0(),),
            resolv_conf=resolv,
            problems=tuple(problems),
        )
    # bridge
    if net.ipv4 is None:
        problems.append(
            "network.ipv4: bridge mode on freebsd_jail needs a static address (no address allocation yet)"
        )
        return NetworkPlan("vnet", [], problems=tuple(problems))
    v4 = ipaddress.IPv4Address(net.ipv4)
    v6 = ipaddress.IPv6Address(net.ipv6) if net.ipv6 else None
    mtu = ("mtu", str(net.mtu)) if net.mtu else ()
    if stack == "ip":
        params: Params = [("ip4.addr", (v4,))]
        setup = [Step(("ifconfig", interface, "inet", f"{v4}/32", "alias"))]
        teardown = [Step(("ifconfig", interface, "inet", str(v4), "-alias"), check=False)]
        if v6 is not None:
            params.append(("ip6.addr", (v6,)))
            setup.append(Step(("ifconfig", interface, "inet6", f"{v6}/128", "alias")))
            teardown.append(Step(("ifconfig", interface, "inet6", str(v6), "-alias"), check=False))
        else:
            params.append(("ip6", JAIL_SYS_DISABLE))
        return NetworkPlan(
            "ip",
            params,
            host_setup=tuple(setup),
            teardown=tuple(teardown),
            resolv_conf=resolv,
            problems=tuple(problems),
        )
    subnet = ipaddress.IPv4Network(f"{v4}/{prefixlen}", strict=False)
    gw = ipaddress.IPv4Address(gateway) if gateway else subnet.network_address + 1
    if v4 in (gw, subnet.network_address, subnet.broadcast_address):
        problems.append(f"network.ipv4: {v4} is the gateway, network or broadcast address of {subnet}")
    if gw not in subnet:
        problems.append(f"network gateway {gw} is outside {subnet}")
    host_end, jail_end = epair_names(host_tag, instance_id)
    bridge = bridge_name(host_tag, net.network or "default")
    host_setup = (
        Step(("ifconfig", "epair", "create"), capture="epair", strip_suffix="a"),
        Step(("ifconfig", "{epair}a", "name", host_end)),
        Step(("ifconfig", "{epair}b", "name", jail_end)),
        Step(("ifconfig", "bridge", "create", "name", bridge), only_if_missing=bridge),
        Step(("ifconfig", bridge, "inet", f"{gw}/{prefixlen}", "up"), only_if_missing=bridge),
        Step(("ifconfig", bridge, "addm", host_end, "up")),
        Step(("ifconfig", host_end, *mtu, "up")),
        Step(("ifconfig", jail_end, "vnet", jail)),
    )
    jail_setup = [
        _lo0(),
        Step(("ifconfig", jail_end, "inet", f"{v4}/{prefixlen}", *mtu, "up"), where="jail"),
        Step(("route", "add", "default", str(gw)), where="jail"),
    ]
    if v6 is not None:
        jail_setup.insert(2, Step(("ifconfig", jail_end, "inet6", f"{v6}/64"), where="jail"))
    return NetworkPlan(
        "vnet",
        [("vnet", JAIL_SYS_NEW)],
        host_setup=host_setup,
        jail_setup=tuple(jail_setup),
        # the jail end comes back to the host on jail_remove; destroying one end destroys both
        teardown=(Step(("ifconfig", host_end, "destroy"), check=False),),
        interfaces=(host_end, jail_end),
        resolv_conf=resolv,
        problems=tuple(problems),
    )


def substitute(argv: tuple[str, ...], captured: dict[str, str]) -> tuple[str, ...]:
    """Fill ``{name}`` placeholders from earlier steps' captured output."""
    return tuple(a.format(**captured) if "{" in a else a for a in argv)
