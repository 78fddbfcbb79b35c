"""The nftables side of the network layer: one ``inet stockade_<tag>`` table per host root.

The ruleset is static and matches this root's bridges by wildcard (``stk<tag>n*``), so
creating a network or an instance changes only set/map elements, never rules:

- input: from a stockade bridge only replies (ct established/related) and IPv6 neighbour
  discovery reach the host; everything else (the gateway address, every other host
  address, host services) is dropped.
- forward: packets between two ports of one bridge are accepted (``samebr``; with
  br_netfilter loaded, bridged frames traverse this hook with in = out = the bridge);
  everything else entering or leaving a stockade bridge is dropped: no routing between
  networks, nothing out through the uplink, nothing in from it.
- nat: published ports are DNAT map elements (127.0.0.1 . host port -> instance . port)
  applied to locally generated packets; their loopback source is masqueraded to the
  bridge's gateway address so the instance can answer.

Our chains only ever drop packets that touch our own bridges, so other tables on the
host (docker, other roots) are unaffected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from .names import bridge_glob, table_name
from .nft import NftError, nft

PUBLISH_MAPS = {"tcp": "publish_tcp", "udp": "publish_udp"}
COUNTED = ("input-drop", "forward-in-drop", "forward-out-drop")


def _t(tag: str) -> dict[str, str]:
    return {"family": "inet", "table": table_name(tag)}


def _ruleset(tag: str) -> str:
    # nft's own syntax rather than JSON for this one batch: the JSON parser of nftables
    # 1.0.6 (Debian 12) cannot declare a map whose data is a concatenation
    # (address . port) and crashes on a dnat through one. Everything on the hot path
    # (elements, listing, deleting) is JSON.
    g = bridge_glob(tag)
    return f"""
table inet {table_name(tag)} {{
  set samebr {{ type ifname . ifname; }}
  map publish_tcp {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
  map publish_udp {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{g}" ct state established,related accept
    iifname "{g}" icmpv6 type {{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert }} accept
    iifname "{g}" counter drop comment "input-drop"
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname . oifname @samebr accept
    iifname "{g}" counter drop comment "forward-in-drop"
    oifname "{g}" counter drop comment "forward-out-drop"
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    meta l4proto tcp dnat ip to ip daddr . tcp dport map @publish_tcp
    meta l4proto udp dnat ip to ip daddr . udp dport map @publish_udp
  }}
  chain nat_postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{g}" ip saddr 127.0.0.0/8 masquerade
  }}
}}
"""


def table_exists(tag: str) -> bool:
    try:
        nft().run([{"list": {"table": {"family": "inet", "name": table_name(tag)}}}])
    except NftError:
        return False
    return True


def ensure_table(tag: str) -> None:
    """Create this root's table with its ruleset unless it is there already."""
    if not table_exists(tag):
        nft().run_text(_ruleset(tag))


def delete_table(tag: str) -> bool:
    if not table_exists(tag):
        return False
    nft().run([{"delete": {"table": {"family": "inet", "name": table_name(tag)}}}])
    return True


def _bridge_elem(bridge: str) -> dict[str, Any]:
    return {"concat": [bridge, bridge]}


def _publish_elem(pub: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"concat": [pub["host_ip"], pub["host_port"]]}, {"concat": [pub["addr"], pub["port"]]}]


def add_bridge(tag: str, bridge: str) -> None:
    nft().run([{"add": {"element": {**_t(tag), "name": "samebr", "elem": [_bridge_elem(bridge)]}}}])


def remove_bridge(tag: str, bridge: str) -> None:
    with contextlib.suppress(NftError):  # already gone: idempotent
        nft().run([{"delete": {"element": {**_t(tag), "name": "samebr", "elem": [_bridge_elem(bridge)]}}}])


def add_publish(tag: str, pubs: Iterable[dict[str, Any]]) -> None:
    cmds = [
        {"add": {"element": {**_t(tag), "name": PUBLISH_MAPS[p["protocol"]], "elem": [_publish_elem(p)]}}}
        for p in pubs
    ]
    if cmds:
        nft().run(cmds)


def remove_publish(tag: str, pubs: Iterable[dict[str, Any]]) -> None:
    for p in pubs:  # one by one: a missing element must not keep the others
        with contextlib.suppress(NftError):
            nft().run(
                [
                    {
                        "delete": {
                            "element": {
                                **_t(tag),
                                "name": PUBLISH_MAPS[p["protocol"]],
                                "elem": [{"concat": [p["host_ip"], p["host_port"]]}],
                            }
                        }
                    }
                ]
            )


def resync(tag: str, bridges: Iterable[str], pubs: Iterable[dict[str, Any]]) -> None:
    """Make the sets hold exactly these elements (gc: drop what belongs to nobody)."""
    cmds: list[dict[str, Any]] = [{"flush": {"set": {**_t(tag), "name": "samebr"}}}]
    cmds += [{"flush": {"map": {**_t(tag), "name": m}}} for m in PUBLISH_MAPS.values()]
    elems = [_bridge_elem(b) for b in bridges]
    if elems:
        cmds.append({"add": {"element": {**_t(tag), "name": "samebr", "elem": elems}}})
    for p in pubs:
        cmds.append(
            {"add": {"element": {**_t(tag), "name": PUBLISH_MAPS[p["protocol"]], "elem": [_publish_elem(p)]}}}
        )
    nft().run(cmds)


def counters(tag: str) -> dict[str, int]:
    """Packets dropped so far by each counted rule (by its comment), for tests and inspect."""
    out: dict[str, int] = {}
    items = nft().run([{"list": {"table": {"family": "inet", "name": table_name(tag)}}}])
    for item in items:
        rule = item.get("rule")
        if not rule or rule.get("comment") not in COUNTED:
            continue
        for e in rule["expr"]:
            if "counter" in e:
                out[rule["comment"]] = int(e["counter"]["packets"])
    return out
