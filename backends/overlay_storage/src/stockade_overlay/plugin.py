"""Entry point of the overlay plugin."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .backend import OverlayStorage

    registry.add(OverlayStorage)
