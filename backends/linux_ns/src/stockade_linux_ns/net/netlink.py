"""Kernel side of the network layer, over netlink with pyroute2 (imported here, lazily).

The instance's end of a veth pair is created directly inside its namespace
(IFLA_NET_NS_FD) and configured through a netlink socket opened inside that namespace:
the calling thread setns()es in, opens the socket and comes straight back (a netlink
socket stays bound to the namespace it was opened in), which costs two syscalls
(measured 0.2 ms; a helper thread doing the same 0.7 ms) where pyroute2's own
``netns=`` forks a helper process. The requests on that socket go as one batch
(rtnl.py). Dropping the namespace removes the
pair, so nothing here waits for a link deletion on the hot path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

CLONE_NEWNET = 0x40000000
IFA_F_NODAD = 0x02
_lock = threading.RLock()
_host: dict[int, Any] = {}  # pid -> IPRoute: a fork must not reuse its parent's socket


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns(CLONE_NEWNET): {os.strerror(e)}")


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """pyroute2's NetlinkError as OSError (with the errno), so callers catch one type."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as e:
        raise OSError(e.code, f"{what}: {os.strerror(e.code)}") from e


@contextlib.contextmanager
def host() -> Iterator[Any]:
    """The process's netlink socket in the host namespace, serialized across threads."""
    from pyroute2 import IPRoute

    with _lock:
        ipr = _host.get(os.getpid())
        if ipr is None:
            _host.clear()
            ipr = _host[os.getpid()] = IPRoute(groups=0)
        with _os_errors("netlink (host)"):
            yield ipr


def netns_socket(netns_path: str) -> socket.socket:
    """A netlink (route) socket bound to the namespace at ``netns_path``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
        finally:
            _setns(own)  # setns is per thread: only this thread ever left the host namespace
    finally:
        os.close(target)
        os.close(own)


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _iface_addrs(cidrs: Sequence[str]) -> list[tuple[str, int, int]]:
    out = []
    for cidr in cidrs:
        iface = ipaddress.ip_interface(cidr)
        flags = IFA_F_NODAD if iface.version == 6 else 0
        out.append((str(iface.ip), iface.network.prefixlen, flags))
    return out


def ensure_bridge(name: str, gateways: Sequence[str], mtu: int | None, alias: str) -> int:
    """Make the bridge (gateway addresses, up) unless it is there; return its index."""
    with host() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            ipr.link("add", ifname=name, kind="bridge")
            idx = _index(ipr, name)
            assert idx is not None
            ipr.link("set", index=idx, ifalias=alias)
        if mtu:
            # Set, not given at creation: only an MTU set on the bridge afterwards counts as
            # the user's, which the kernel then keeps; otherwise the bridge takes the
            # smallest MTU of its ports (one instance with network.mtu = 1280 would lower
            # the whole network's).
            ipr.link("set", index=idx, mtu=mtu)
        have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=idx)}
        for addr, plen, flags in _iface_addrs(gateways):
            if (addr, plen) not in have:
                ipr.addr("add", index=idx, address=addr, prefixlen=plen, flags=flags)
        ipr.link("set", index=idx, state="up")
    # Published ports DNAT 127.0.0.1 to an instance: the kernel routes a loopback source
    # out of this bridge only with route_localnet (on this bridge alone; the input chain
    # drops what instances send to 127/8 anyway).
    with contextlib.suppress(OSError), open(f"/proc/sys/net/ipv4/conf/{name}/route_localnet", "w") as f:
        f.write("1")
    return idx


def create_instance_link(
    host_name: str, bridge: str, netns_path: str, mtu: int, isolated: bool, *, mac: str | None = None
) -> None:
    """veth pair: ``host_name`` on ``bridge`` (up), its peer created as eth0 in the namespace
    (with the MAC address ``mac``, if given)."""
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with host() as ipr:
            br = _index(ipr, bridge)
            if br is None:
                raise OSError(errno.ENODEV, f"bridge {bridge} is missing")
            ipr.link(
                "add",
                ifname=host_name,
                kind="veth",
                mtu=mtu,
                master=br,
                state="up",
                peer={"ifname": "eth0", "net_ns_fd": nsfd, "mtu": mtu, **({"address": mac} if mac else {})},
            )
            if isolated:
                idx = _index(ipr, host_name)
                ipr.brport("set", index=idx, isolated=1)
    finally:
        os.close(nsfd)


def configure_inside(netns_path: str, cidrs: Sequence[str], gateways: Sequence[str]) -> None:
    """Inside the namespace: eth0's addresses, lo and eth0 up, default routes via the gateways."""
    from . import rtnl

    sock = netns_socket(netns_path)
    with sock:
        rtnl.configure(sock, "eth0", cidrs, gateways)


def delete_link(name: str) -> bool:
    with host() as ipr:
        idx = _index(ipr, name)
        if idx is None:
            return False
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr.link("del", index=idx)
        except NetlinkError as e:
            if e.code != errno.ENODEV:  # gone meanwhile (its namespace died): fine
                raise
            return False
        return True


@dataclass(frozen=True)
class Link:
    name: str
    kind: str
    master: int | None
    index: int


def links(prefix: str) -> list[Link]:
    out = []
    with host() as ipr:
        for msg in ipr.get_links():
            name = msg.get_attr("IFLA_IFNAME") or ""
            if not name.startswith(prefix):
                continue
            info = msg.get_attr("IFLA_LINKINFO")
            kind = (info.get_attr("IFLA_INFO_KIND") if info else None) or ""
            out.append(Link(name, kind, msg.get_attr("IFLA_MASTER"), int(msg["index"])))
    return out


def host_overlaps(
    nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network], exclude_prefix: str
) -> list[str]:
    """Host addresses and routes (main table, not default) that overlap these subnets.

    Links named ``exclude_prefix...`` (this root's own) are left out.
    """
    hits: list[str] = []
    with host() as ipr:
        names = {int(m["index"]): m.get_attr("IFLA_IFNAME") or "" for m in ipr.get_links()}
        ours = {i for i, n in names.items() if n.startswith(exclude_prefix)}
        for a in ipr.get_addr():
            if a["index"] in ours:
                continue
            iface = ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            for net in nets:
                if iface.version == net.version and iface.network.overlaps(net):
                    hits.append(f"address {iface} of {names.get(a['index'], a['index'])}")
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family, table=254):
                dst, plen = r.get_attr("RTA_DST"), r["dst_len"]
                if dst is None or plen == 0 or r.get_attr("RTA_OIF") in ours:
                    continue
                rnet = ipaddress.ip_network(f"{dst}/{plen}", strict=False)
                if rnet.is_link_local or rnet.is_multicast:
                    continue
                for net in nets:
                    if rnet.version == net.version and rnet.overlaps(net):
                        hits.append(f"route {rnet}")
    return sorted(set(hits))
