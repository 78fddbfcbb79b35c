"""Named networks of a host root: create, list, inspect, delete, gc.

A network is a Linux bridge (``stk<tag>n<hash>``) holding the gateway addresses, an
entry in this root's nftables table, and two files under ``<root>/networks``: its
definition and its leases. ``stockade network create|list|inspect|delete`` call this.
"""

from __future__ import annotations

import builtins
import errno
import ipaddress
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from stockade.errors import AlreadyExists, IsolationError, NotFound, SpecError, StateConflict
from stockade.interfaces import BackendConfig

from . import ipam
from .names import (
    DEFAULT_NETWORK,
    NETWORK_NAME_RE,
    bridge_name,
    link_alias,
    link_prefix,
    table_name,
)
from .store import Store


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    bridge: str
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    isolated: bool = False
    mtu: int | None = None
    created: float = 0.0
    instances: tuple[dict[str, Any], ...] = field(default=())  # the leases, by instance

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["subnets"], d["gateways"] = list(self.subnets), list(self.gateways)
        d["instances"] = [dict(x) for x in self.instances]
        return d


def _info(defn: dict[str, Any], leases: dict[str, dict[str, Any]]) -> NetworkInfo:
    return NetworkInfo(
        name=defn["name"],
        bridge=defn["bridge"],
        subnets=tuple(defn["subnets"]),
        gateways=tuple(defn["gateways"]),
        isolated=bool(defn.get("isolated")),
        mtu=defn.get("mtu"),
        created=float(defn.get("created", 0.0)),
        instances=tuple(sorted(leases.values(), key=lambda x: str(x.get("name")))),
    )


def gateway_cidrs(defn: dict[str, Any]) -> list[str]:
    """The bridge's addresses: each gateway with its subnet's prefix length."""
    out = []
    for gw, subnet in zip(defn["gateways"], defn["subnets"], strict=True):
        out.append(f"{gw}/{ipaddress.ip_network(subnet).prefixlen}")
    return out


# Networks this process has brought up, by (root, name, created): an attach to one of
# them skips re-checking the bridge and the table (a missing bridge still shows, as the
# veth's master lookup fails, and attach then brings it up again).
_up: set[tuple[str, str, float]] = set()


def forget_up(config: BackendConfig, name: str) -> None:
    for key in [k for k in _up if k[0] == str(config.root) and k[1] == name]:
        _up.discard(key)


class Networks:
    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.tag = config.host_tag
        self.store = Store(config.root)

    # --- public API -------------------------------------------------------------------

    def create(
        self, name: str, subnets: builtins.list[str], isolated: bool = False, mtu: int | None = None
    ) -> NetworkInfo:
        with self.store.locked():
            return _info(self._create_locked(name, subnets, isolated, mtu), {})

    def list(self) -> builtins.list[NetworkInfo]:
        out = []
        for name in self.store.names():
            defn = self.store.load(name)
            if defn is not None:
                out.append(_info(defn, self.store.leases(name)))
        return out

    def inspect(self, name: str) -> NetworkInfo:
        defn = self.store.load(name)
        if defn is None:
            raise NotFound(f"network {name!r} does not exist (see `stockade network list`)")
        return _info(defn, self.store.leases(name))

    def delete(self, name: str) -> None:
        from . import firewall, netlink

        with self.store.locked():
            defn = self.store.load(name)
            if defn is None:
                raise NotFound(f"network {name!r} does not exist (see `stockade network list`)")
            leases = self.store.leases(name)
            if leases:
                users = ", ".join(sorted(str(x.get("name")) for x in leases.values()))
                raise StateConflict(
                    f"network {name!r} is in use by {users}: delete those instances first "
                    "(or run `stockade gc` if they are gone)"
                )
            netlink.delete_link(defn["bridge"])
            if firewall.table_exists(self.tag):
                firewall.remove_bridge(self.tag, defn["bridge"])
            self.store.remove(name)
            forget_up(self.config, name)
            if not self.store.names():
                firewall.delete_table(self.tag)

    def gc(self, known_instances: Collection[str]) -> builtins.list[str]:
        """Drop what belongs to no known instance (names or ids) or no defined network."""
        from . import firewall, hostsfile, netlink

        removed: builtins.list[str] = []
        with self.store.locked():
            defs = {n: d for n in self.store.names() if (d := self.store.load(n)) is not None}
            live_links: set[str] = set()
            live_pubs: builtins.list[dict[str, Any]] = []
            for name in defs:
                leases = self.store.leases(name)
                keep = {
                    i: lease
                    for i, lease in leases.items()
                    if i in known_instances or lease.get("name") in known_instances
                }
                for i in leases.keys() - keep.keys():
                    removed.append(
                        f"lease {name}/{leases[i].get('name')} "
                        f"({leases[i].get('ipv4') or leases[i].get('ipv6')})"
                    )
                if len(keep) != len(leases):
                    self.store.save_leases(name, keep)
                    hostsfile.refresh(keep)
                for lease in keep.values():
                    live_links.add(lease["host_link"])
                    live_pubs.extend(lease.get("publish", []))
            bridges = {d["bridge"] for d in defs.values()}
            for link in netlink.links(link_prefix(self.tag)):
                if link.kind == "bridge" and link.name in bridges:
                    continue
                if link.kind == "veth" and link.name in live_links:
                    continue
                if netlink.delete_link(link.name):
                    removed.append(f"link {link.name} ({link.kind or 'unknown kind'})")
            if firewall.table_exists(self.tag):
                if not defs:
                    firewall.delete_table(self.tag)
                    removed.append(f"nftables table inet {table_name(self.tag)}")
                else:
                    firewall.resync(self.tag, sorted(bridges), live_pubs)
        return removed

    # --- used by attach, under the lock -------------------------------------------------

    def _create_locked(
        self, name: str, subnets: builtins.list[str], isolated: bool, mtu: int | None
    ) -> dict[str, Any]:
        from . import netlink

        if not NETWORK_NAME_RE.match(name):
            raise SpecError(
                [
                    (
                        "name",
                        f"{name!r} is not a valid network name (letters, digits, '_', '.', '-'; 1-63 chars)",
                    )
                ]
            )
        if mtu is not None and not 576 <= mtu <= 65535:
            raise SpecError([("mtu", f"{mtu} is out of range (576..65535)")])
        if self.store.load(name) is not None:
            raise AlreadyExists(f"network {name!r} already exists (see `stockade network inspect {name}`)")
        if not subnets:
            subnets = self._free_subnets()
        nets = ipam.parse_subnets(subnets)
        problems = self._overlaps(nets)
        if problems:
            raise SpecError(problems)
        bridge = bridge_name(self.tag, name)
        defn: dict[str, Any] = {
            "name": name,
            "bridge": bridge,
            "subnets": [str(n) for n in nets],
            "gateways": [str(ipam.gateway(n)) for n in nets],
            "isolated": isolated,
            "mtu": mtu,
            "created": time.time(),
        }
        try:
            self._bring_up(defn)
        except BaseException:
            netlink.delete_link(bridge)
            raise
        self.store.save(name, defn)
        _up.add((str(self.config.root), name, float(defn["created"])))
        return defn

    def _overlaps(self, nets: builtins.list[ipam.IPNet]) -> builtins.list[tuple[str, str]]:
        """Why these subnets cannot be used: other networks of the root, host addresses/routes."""
        from . import netlink

        problems = []
        for other in self.store.names():
            odef = self.store.load(other) or {}
            for s in odef.get("subnets", []):
                for net in nets:
                    onet = ipaddress.ip_network(s)
                    if onet.version == net.version and onet.overlaps(net):
                        problems.append(("subnets", f"{net} overlaps network {other!r} ({s})"))
        for hit in netlink.host_overlaps(nets, exclude_prefix=link_prefix(self.tag)):
            problems.append(
                ("subnets", f"{hit} on this host overlaps the subnet: pick another range (--subnet)")
            )
        return problems

    def _free_subnets(self) -> builtins.list[str]:
        """No --subnet given: the first free pair of ipam.auto_subnets() (like podman's 10.89.N/24)."""
        for v4, v6 in ipam.auto_subnets():
            if not self._overlaps([v4, v6]):
                return [str(v4), str(v6)]
        raise SpecError([("subnets", "no free subnet left in the automatic ranges: give one with --subnet")])

    def _bring_up(self, defn: dict[str, Any]) -> None:
        """Bridge and firewall present (again, after a reboot). Idempotent."""
        from . import firewall, netlink

        try:
            firewall.ensure_table(self.tag)
            netlink.ensure_bridge(
                defn["bridge"],
                gateway_cidrs(defn),
                defn.get("mtu"),
                link_alias(self.tag, "network:" + defn["name"]),
            )
            firewall.add_bridge(self.tag, defn["bridge"])
        except OSError as e:
            raise IsolationError(
                f"network {defn['name']!r}: cannot set up bridge {defn['bridge']}: {e}",
                errno=e.errno or errno.EIO,
            ) from e

    def _ensure_locked(self, name: str) -> dict[str, Any]:
        defn = self.store.load(name)
        if defn is None:
            if name != DEFAULT_NETWORK:
                raise NotFound(
                    f"network {name!r} does not exist: create it with "
                    f"`stockade network create {name} --subnet ...`"
                )
            subnets = list(self.config.options.get("default_subnets", ipam.DEFAULT_SUBNETS))
            return self._create_locked(name, subnets, False, None)
        key = (str(self.config.root), name, float(defn.get("created", 0.0)))
        if key not in _up:
            self._bring_up(defn)
            _up.add(key)
        return defn
