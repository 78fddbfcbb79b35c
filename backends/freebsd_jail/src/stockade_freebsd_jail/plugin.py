"""Entry point of the freebsd_jail plugin: registers its backends (nothing platform-specific is
imported: the backend modules load cffi and libc only when used, and only on FreeBSD)."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .isolation import FreeBsdJailIsolation
    from .quota import RctlQuota

    registry.add(FreeBsdJailIsolation)
    registry.add(RctlQuota)
