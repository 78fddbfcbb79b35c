"""Address management of a network: subnets, gateways, and allocation from the leases."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from stockade.errors import IsolationError, SpecError

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

# The default network's ranges (docs/networking.md): private, and unlike 172.17/16
# (docker) or 10.0.0.0/8 corners commonly routed by sites, rarely in use already.
DEFAULT_SUBNETS = ("10.88.0.0/16", "fd00:88::/64")


# A network created without --subnet gets the first free pair 10.89.N.0/24 +
# fd00:89:N::/64 (N = 0..255), as podman allocates 10.89.N.0/24 to its networks.
def auto_subnets() -> Iterator[tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]]:
    for n in range(256):
        yield ipaddress.IPv4Network(f"10.89.{n}.0/24"), ipaddress.IPv6Network(f"fd00:89:{n:x}::/64")


def parse_subnets(subnets: Sequence[str]) -> list[IPNet]:
    """At most one IPv4 and one IPv6 subnet, at least one; each with room for instances."""
    problems: list[tuple[str, str]] = []
    nets: list[IPNet] = []
    for i, s in enumerate(subnets):
        try:
            net = ipaddress.ip_network(s, strict=True)
        except ValueError as e:
            problems.append((f"subnets[{i}]", f"{s!r} is not a subnet (like 10.89.0.0/24): {e}"))
            continue
        limit = 30 if net.version == 4 else 126
        if net.prefixlen > limit:
            problems.append((f"subnets[{i}]", f"{s!r} is too small (at most /{limit})"))
        elif not net.is_private:
            problems.append((f"subnets[{i}]", f"{s!r} is not a private range (RFC 1918 / ULA)"))
        else:
            nets.append(net)
    if not subnets:
        problems.append(("subnets", "give at least one subnet"))
    for version in (4, 6):
        if sum(1 for n in nets if n.version == version) > 1:
            problems.append(("subnets", f"at most one IPv{version} subnet per network"))
    if problems:
        raise SpecError(problems)
    return nets


def gateway(net: IPNet) -> IPAddr:
    return net.network_address + 1


def _first_free(net: IPNet, used: set[IPAddr], start: int = 2) -> IPAddr | None:
    last = net.num_addresses - (2 if net.version == 4 else 1)  # skip v4 broadcast
    for off in range(start, last + 1):
        addr = net.network_address + off
        if addr not in used:
            return addr
    return None


def check_static(net: IPNet, value: str, used: set[IPAddr], field: str) -> IPAddr:
    addr = ipaddress.ip_address(value)
    reserved = {net.network_address, gateway(net)}
    if isinstance(net, ipaddress.IPv4Network):
        reserved.add(net.broadcast_address)
    if addr not in net:
        raise SpecError([(field, f"{value} is not in the network's subnet {net}")])
    if addr in reserved:
        raise SpecError([(field, f"{value} is reserved in {net} (network, gateway or broadcast)")])
    if addr in used:
        raise SpecError([(field, f"{value} is already leased to another instance of {net}")])
    return addr


def allocate(
    nets: Iterable[IPNet],
    leases: Iterable[dict[str, Any]],
    want4: str | None,
    want6: str | None,
    network: str,
) -> dict[str, str]:
    """Addresses for one new lease: static ones checked, others the lowest free.

    An allocated IPv6 address takes the IPv4 one's host offset when free, so the two
    read alike (10.88.0.5 and fd00:88::5).
    """
    used: set[IPAddr] = set()
    for lease in leases:
        for key in ("ipv4", "ipv6"):
            if lease.get(key):
                used.add(ipaddress.ip_address(lease[key]))
    by_version: dict[int, IPNet] = {n.version: n for n in nets}
    out: dict[str, str] = {}
    offset: int | None = None
    for version, want in ((4, want4), (6, want6)):
        key = f"ipv{version}"
        net = by_version.get(version)
        if net is None:
            if want is not None:
                raise SpecError([(f"network.{key}", f"network {network!r} has no IPv{version} subnet")])
            continue
        if want is not None:
            addr = check_static(net, want, used, f"network.{key}")
        else:
            addr_or_none = None
            if offset is not None:
                candidate = net.network_address + offset
                if offset < net.num_addresses - 1 and candidate not in used:
                    addr_or_none = candidate
            addr_or_none = addr_or_none or _first_free(net, used)
            if addr_or_none is None:
                raise IsolationError(
                    f"network {network!r}: no free IPv{version} address left in {net}; "
                    "detach instances or create a network with a larger subnet"
                )
            addr = addr_or_none
        offset = int(addr) - int(net.network_address)
        out[key] = str(addr)
    return out
