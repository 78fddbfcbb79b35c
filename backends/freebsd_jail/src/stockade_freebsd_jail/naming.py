"""Names of the host resources an instance owns, so each can be found again (gc)."""

from __future__ import annotations

import re

from ._ffi import IFNAMSIZ

JAIL_PREFIX = "stockade-"


def jail_prefix(host_tag: str) -> str:
    return f"{JAIL_PREFIX}{_safe(host_tag)}-"


def jail_name(host_tag: str, instance_id: str) -> str:
    """``stockade-<tag>-<id>``: never numeric, no '.' (jail hierarchy), no ':' or ',' (rctl syntax)."""
    return jail_prefix(host_tag) + _safe(instance_id)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", s)


def _short_hash(*parts: str, n: int) -> str:
    import hashlib  # 2 ms to import: only when an interface name is needed

    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:n]


def epair_prefix(host_tag: str) -> str:
    """``stk`` + 4 hex of the host root: gc touches only its own root's pairs."""
    return "stk" + _short_hash(host_tag, n=4)


def epair_names(host_tag: str, instance_id: str) -> tuple[str, str]:
    """(host end, jail end): ``stk<4 hex root><7 hex id>a``/``b``, 15 chars, the IFNAMSIZ limit."""
    base = epair_prefix(host_tag) + _short_hash(host_tag, instance_id, n=7)
    names = (base + "a", base + "b")
    assert all(len(n) < IFNAMSIZ for n in names)
    return names


def bridge_name(host_tag: str, network: str) -> str:
    """One bridge per named network and host root: ``stkbr<8 hex>``."""
    name = "stkbr" + _short_hash(host_tag, network, n=8)
    assert len(name) < IFNAMSIZ
    return name
