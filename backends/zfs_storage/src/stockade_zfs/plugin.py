"""Entry point of the zfs plugin: registers ZfsStorage (libzfs is loaded only when used)."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .storage import ZfsStorage

    registry.add(ZfsStorage)
