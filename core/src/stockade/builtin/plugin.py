"""The built-in plugin of the stockade distribution: the `dir` storage backend (plain copy,
the reference every other storage backend is compared with)."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .dir_storage import DirStorage

    registry.add(DirStorage)
