"""Entry point (``[project.entry-points.stockade] chroot = ...``): hands the backend over."""

from __future__ import annotations

from stockade.plugins import Registry, hookimpl


@hookimpl
def stockade_register_backends(registry: Registry) -> None:
    from .backend import ChrootIsolation

    registry.add(ChrootIsolation)
