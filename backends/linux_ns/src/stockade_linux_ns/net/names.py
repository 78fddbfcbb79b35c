"""Names of the host resources of the network layer, derived so they can be found again.

Interface names have 15 characters at most. Every link of a host root starts with
``stk`` + five hex digits of its host tag, so two roots (two test sessions) never
collide and ``gc`` finds exactly its own: bridges are ``stk<tag>n<net>`` (the ``n``
is not a hex digit, so a bridge name never equals an instance's), instance links
``stk<tag><id>``.
"""

from __future__ import annotations

import hashlib
import re

DEFAULT_NETWORK = "stockade0"
NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _hex(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def link_prefix(host_tag: str) -> str:
    """What every link of this host root starts with."""
    return "stk" + _hex("root:" + host_tag, 5)


def bridge_name(host_tag: str, network: str) -> str:
    return link_prefix(host_tag) + "n" + _hex("net:" + network, 6)


def bridge_glob(host_tag: str) -> str:
    """nftables wildcard matching every bridge of this root (and nothing else)."""
    return link_prefix(host_tag) + "n*"


def host_link_name(host_tag: str, instance_id: str) -> str:
    return link_prefix(host_tag) + _hex("inst:" + instance_id, 7)


def table_name(host_tag: str) -> str:
    """The nftables table of this root: ``inet stockade_<tag>``."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", host_tag)[:40]
    return f"stockade_{safe}"


def link_alias(host_tag: str, what: str) -> str:
    """IFLA_IFALIAS written on each link: says who made it, for humans and gc."""
    return f"stockade:{host_tag}:{what}"[:255]
