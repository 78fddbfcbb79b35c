"""Giving an instance's network namespace a place on a bridge network, and taking it back.

Order matters for speed and for concurrency: the lease (addresses, published ports,
hosts files) is decided under the root's network lock in a few milliseconds; the
netlink work (veth with its peer born inside the namespace, addresses and routes set
from a socket opened there) and the firewall elements come after, outside the lock.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import time
from typing import Any

from stockade.errors import IsolationError, SpecError, StateConflict, StockadeError
from stockade.interfaces import InstanceContext
from stockade.spec import InstanceSpec

from . import firewall, hostsfile, ipam, netlink
from .names import DEFAULT_NETWORK, NETWORK_NAME_RE, host_link_name
from .networks import Networks, forget_up

DEFAULT_MTU = 1500


def check_network_spec(spec: InstanceSpec) -> list[str]:
    """What in the spec's network part this layer cannot do (one line each)."""
    net = spec.network
    out: list[str] = []
    if net.mode != "bridge":
        return out
    if net.network is not None and not NETWORK_NAME_RE.match(net.network):
        out.append(f"network.network: {net.network!r} is not a valid network name")
    for i, p in enumerate(net.publish):
        try:
            ip = ipaddress.ip_address(p.host_ip)
        except ValueError:
            out.append(f"network.publish[{i}]: {p.host_ip!r} is not an IP address")
            continue
        if not (ip.version == 4 and ip.is_loopback):
            out.append(
                f"network.publish[{i}]: ports are published on the host's loopback "
                f"(127.0.0.0/8) only, not {p.host_ip}"
            )
    return out


def _publish_entries(
    ctx: InstanceContext, addr4: str | None, taken: set[tuple[str, str, int]]
) -> list[dict[str, Any]]:
    out = []
    problems = check_network_spec(ctx.spec)
    if problems:
        raise SpecError([(x.split(": ", 1)[0], x.split(": ", 1)[-1]) for x in problems])
    for i, p in enumerate(ctx.spec.network.publish):
        if addr4 is None:
            raise SpecError([(f"network.publish[{i}]", "the network has no IPv4 subnet to publish to")])
        key = (p.protocol, p.host_ip, p.host_port)
        if key in taken:
            raise StateConflict(
                f"instance {ctx.name!r}: {p.host_ip}:{p.host_port}/{p.protocol} is "
                "already published by another instance"
            )
        _check_port_free(ctx, p.protocol, p.host_ip, p.host_port)
        taken.add(key)
        out.append(
            {
                "protocol": p.protocol,
                "host_ip": p.host_ip,
                "host_port": p.host_port,
                "addr": addr4,
                "port": p.port,
            }
        )
    return out


def _check_port_free(ctx: InstanceContext, proto: str, host_ip: str, port: int) -> None:
    """Refuse a port a host service listens on: DNAT would silently shadow it."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host_ip, port))
        except OSError as e:
            raise StateConflict(
                f"instance {ctx.name!r}: cannot publish {host_ip}:{port}/{proto}: {e.strerror} on the host"
            ) from e


def _all_publish(nets: Networks) -> set[tuple[str, str, int]]:
    taken = set()
    for name in nets.store.names():
        for lease in nets.store.leases(name).values():
            for p in lease.get("publish", []):
                taken.add((p["protocol"], p["host_ip"], int(p["host_port"])))
    return taken


def attach_instance_network(ctx: InstanceContext, netns_path: str) -> None:
    spec = ctx.spec.network
    name = spec.network or DEFAULT_NETWORK
    nets = Networks(ctx.config)
    tag = ctx.config.host_tag
    link = host_link_name(tag, ctx.id)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    hosts_path = str(ctx.run_dir / "hosts")
    resolv_path = ctx.run_dir / "resolv.conf"

    with nets.store.locked():
        defn = nets._ensure_locked(name)
        leases = nets.store.leases(name)
        previous = leases.pop(ctx.id, None) or {}  # a restart keeps its addresses
        subnets = [ipaddress.ip_network(s) for s in defn["subnets"]]
        addrs, mac = _addresses_of_a_restored(ctx, subnets, leases.values(), name, previous)
        if addrs is None:
            addrs = ipam.allocate(
                subnets,
                leases.values(),
                spec.ipv4 or previous.get("ipv4"),
                spec.ipv6 or previous.get("ipv6"),
                name,
            )
        mac = mac or previous.get("mac") or _random_mac()
        taken = _all_publish(nets) - {
            (p["protocol"], p["host_ip"], int(p["host_port"])) for p in previous.get("publish", [])
        }
        pubs = _publish_entries(ctx, addrs.get("ipv4"), taken)
        lease = {
            "id": ctx.id,
            "name": ctx.name,
            "hostname": ctx.spec.effective_hostname,
            **addrs,
            "host_link": link,
            "mac": mac,
            "hosts_file": hosts_path,
            "publish": pubs,
            "since": time.time(),
        }
        leases[ctx.id] = lease
        nets.store.save_leases(name, leases)
        hostsfile.write_in_place(hosts_path, hostsfile.render_hosts(leases.values()), create=True)
        hostsfile.refresh(leases, skip=ctx.id)
        hostsfile.write_in_place(str(resolv_path), hostsfile.render_resolv(spec.dns), create=True)

    mtu = spec.mtu or defn.get("mtu") or DEFAULT_MTU
    prefix = {ipaddress.ip_network(s).version: ipaddress.ip_network(s).prefixlen for s in defn["subnets"]}
    cidrs = [f"{a}/{prefix[ipaddress.ip_address(a).version]}" for a in addrs.values()]
    try:
        netlink.delete_link(link)  # a stale one of this very instance (an earlier crash)
        isolated = bool(defn.get("isolated"))
        try:
            netlink.create_instance_link(link, defn["bridge"], netns_path, mtu, isolated, mac=mac)
        except OSError as e:
            if e.errno != errno.ENODEV:
                raise
            with nets.store.locked():  # the bridge went away (gc, reboot): bring it back
                forget_up(ctx.config, name)
                nets._bring_up(defn)
            netlink.create_instance_link(link, defn["bridge"], netns_path, mtu, isolated, mac=mac)
        netlink.configure_inside(netns_path, cidrs, defn["gateways"])
        firewall.add_publish(tag, pubs)
    except BaseException as e:
        with contextlib.suppress(Exception):
            _release(nets, name, ctx.id, link, pubs)
        if isinstance(e, StockadeError) or not isinstance(e, Exception):
            raise
        code = getattr(e, "errno", None) or errno.EIO
        raise IsolationError(
            f"instance {ctx.name!r}: cannot attach to network {name!r}: {e}", errno=code
        ) from e

    ctx.data.pop("network_wanted", None)
    ctx.data["network"] = {
        "network": name,
        "bridge": defn["bridge"],
        "host_link": link,
        "ifname": "eth0",
        "mac": mac,
        "mtu": mtu,
        **addrs,
        "gateways": list(defn["gateways"]),
        "publish": pubs,
        "hosts_file": hosts_path,
        "resolv_conf": str(resolv_path),
        "isolated": bool(defn.get("isolated")),
    }


def _random_mac() -> str:
    """A locally administered unicast address, chosen here so that it can be kept."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFC) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _addresses_of_a_restored(
    ctx: InstanceContext,
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    leases: Any,
    name: str,
    previous: dict[str, Any],
) -> tuple[dict[str, str] | None, str | None]:
    """A restored or migrated instance (``network_wanted``: what it had where it was
    checkpointed) gets its addresses and its MAC back when they are free on this network:
    its TCP connections then carry on (peers keep sending to the same IP, and their
    neighbour caches to the same MAC). Where they are taken (the original still runs here)
    or outside this network's subnets, it gets new ones, and its connections end."""
    wanted = ctx.data.get("network_wanted") or {}
    spec = ctx.spec.network
    if not wanted or spec.ipv4 or spec.ipv6 or previous:
        return None, None
    try:
        addrs = ipam.allocate(subnets, leases, wanted.get("ipv4"), wanted.get("ipv6"), name)
    except StockadeError:
        return None, None
    return addrs, wanted.get("mac")


def _release(nets: Networks, name: str, instance_id: str, link: str, pubs: list[dict[str, Any]]) -> None:
    with nets.store.locked():
        leases = nets.store.leases(name)
        lease = leases.pop(instance_id, None)
        if lease is not None:
            nets.store.save_leases(name, leases)
            hostsfile.refresh(leases)
            pubs = pubs or lease.get("publish", [])
    if pubs and firewall.table_exists(nets.tag):
        firewall.remove_publish(nets.tag, pubs)
    netlink.delete_link(link)


def detach_instance_network(ctx: InstanceContext) -> None:
    """Release the lease, published ports and host link; update the others' hosts files."""
    rec = ctx.data.get("network") or {}
    if not rec and ctx.spec.network.mode != "bridge":
        return
    name = rec.get("network") or ctx.spec.network.network or DEFAULT_NETWORK
    link = rec.get("host_link") or host_link_name(ctx.config.host_tag, ctx.id)
    try:
        _release(Networks(ctx.config), name, ctx.id, link, list(rec.get("publish", [])))
    except OSError as e:
        raise IsolationError(
            f"instance {ctx.name!r}: cannot detach from network {name!r}: {e}", errno=e.errno or errno.EIO
        ) from e
    ctx.data.pop("network", None)
