"""Entry point of the linux_ns plugin: the namespace isolation and cgroup quota backends.

Only light modules are imported here; kernel bindings load when a backend is used.
"""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .cgroup.backend import CgroupQuota
    from .isolation import LinuxNsIsolation

    registry.add(LinuxNsIsolation)
    registry.add(CgroupQuota)
