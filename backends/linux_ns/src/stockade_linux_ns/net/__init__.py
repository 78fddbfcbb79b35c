"""Bridge networking of the linux_ns backend: named networks, veth pairs, nftables.

The entry points are light: pyroute2 and libnftables load when a network is used.
See docs/networking.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stockade.interfaces import InstanceContext
    from stockade.spec import InstanceSpec

    from .networks import NetworkInfo, Networks

__all__ = [
    "NetworkInfo",
    "Networks",
    "attach_instance_network",
    "check_network_spec",
    "detach_instance_network",
]


def attach_instance_network(ctx: InstanceContext, netns_path: str) -> None:
    """Put the namespace at ``netns_path`` on ctx.spec.network.network (bridge mode)."""
    from .attach import attach_instance_network as attach

    attach(ctx, netns_path)


def detach_instance_network(ctx: InstanceContext) -> None:
    """Undo attach: lease, published ports, host link, hosts files. Idempotent."""
    from .attach import detach_instance_network as detach

    detach(ctx)


def check_network_spec(spec: InstanceSpec) -> list[str]:
    """What in ``spec.network`` this layer cannot do, one line each (for a backend's check)."""
    from .attach import check_network_spec as check

    return check(spec)


def __getattr__(name: str) -> Any:
    if name in ("Networks", "NetworkInfo"):
        from . import networks

        return getattr(networks, name)
    raise AttributeError(name)
