"""Entry point of the zfs plugin: registers its backends (nothing platform-specific is imported)."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    return None
