"""Every stockade hook. The docstrings are the hook documentation (docs/hooks.md is made
from them and the test suite fails when a hook is undocumented or untested).

Backend operations are not hooks: a registration hook hands over a registry, and
the Host calls the chosen backend objects directly. Hooks are for discovery,
lifecycle events and adjusting specs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .host import Instance
    from .plugins import Registry

hookspec = pluggy.HookspecMarker("stockade")


# --- registration ---------------------------------------------------------------------------


@hookspec(historic=True)
def stockade_register_backends(registry: Registry) -> None:
    """Register backend factories with ``registry.add(factory)``.

    A factory is a class (usually a ``BackendBase`` subclass) with class attributes
    ``name``, ``kind`` ("isolation", "quota" or "storage"), ``priority``,
    ``features`` and ``semantics``, called with a ``BackendConfig`` to make the backend.
    Historic: plugins registered late still see the call.
    """


# --- spec -----------------------------------------------------------------------------------


@hookspec
def stockade_prepare_spec(spec: dict[str, Any]) -> None:
    """Adjust a spec dict in place before it is validated (add default mounts, labels,
    environment). Called for every create, after CLI flags and the spec file are merged.
    """


# --- lifecycle events -----------------------------------------------------------------------


@hookspec
def stockade_instance_created(instance: Instance) -> None:
    """An instance was created: storage, limits and isolation are in place, not started."""


@hookspec
def stockade_instance_started(instance: Instance) -> None:
    """An instance's process was started."""


@hookspec
def stockade_instance_stopped(instance: Instance, exit_status: int | None) -> None:
    """An instance's first process ended (``exit_status`` as a shell reports it: 128+signal
    for a signal, None when unknown)."""


@hookspec
def stockade_instance_deleted(name: str) -> None:
    """An instance was deleted and everything it held on the host released."""
