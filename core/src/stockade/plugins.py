"""Plugin discovery: the ``stockade`` entry-point group, loaded through pluggy.

In-tree backends are found exactly as a third party's are: each distribution
declares ``[project.entry-points.stockade]``, the module it names implements
``stockade_register_backends(registry)``. A plugin can be blocked by its entry-point
name (``STOCKADE_DISABLE_PLUGINS=a,b`` or ``PluginManager(blocked=...)``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from . import hookspecs
from .errors import BackendNotFound
from .interfaces import KINDS, Backend, BackendConfig, Kind

ENTRY_POINT_GROUP = "stockade"
hookimpl = pluggy.HookimplMarker("stockade")


@dataclass(frozen=True)
class Registration:
    name: str
    kind: Kind
    factory: type[Any]
    plugin: str  # entry-point name of the plugin that registered it

    @property
    def priority(self) -> int:
        return int(getattr(self.factory, "priority", 0))


class Registry:
    """Handed to ``stockade_register_backends``; collects backend factories by kind and name."""

    def __init__(self) -> None:
        self._items: dict[tuple[Kind, str], Registration] = {}
        self.current_plugin = "?"

    def add(self, factory: type[Any]) -> None:
        kind = getattr(factory, "kind", None)
        name = getattr(factory, "name", None)
        if kind not in KINDS:
            raise TypeError(f"{factory!r}: kind must be one of {KINDS}, not {kind!r}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"{factory!r}: name must be a non-empty string")
        key = (kind, name)
        if key in self._items and self._items[key].factory is not factory:
            prev = self._items[key].plugin
            raise ValueError(
                f"{kind} backend {name!r} registered twice (by {prev!r} and {self.current_plugin!r})"
            )
        self._items[key] = Registration(name, kind, factory, self.current_plugin)

    def of_kind(self, kind: Kind) -> list[Registration]:
        regs = [r for (k, _), r in self._items.items() if k == kind]
        return sorted(regs, key=lambda r: (-r.priority, r.name))

    def get(self, kind: Kind, name: str) -> Registration:
        try:
            return self._items[(kind, name)]
        except KeyError:
            names = ", ".join(r.name for r in self.of_kind(kind)) or "none installed"
            raise BackendNotFound(f"no {kind} backend named {name!r} (installed: {names})") from None

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._items.values(), key=lambda r: (r.kind, -r.priority, r.name)))


class PluginManager:
    """pluggy's manager plus the backend registry, loaded once per process."""

    def __init__(
        self,
        blocked: Iterable[str] = (),
        extra: Iterable[tuple[str, ModuleType | object]] = (),
        load_entry_points: bool = True,
    ) -> None:
        env_blocked = {b.strip() for b in os.environ.get("STOCKADE_DISABLE_PLUGINS", "").split(",")}
        self.blocked = set(blocked) | {b for b in env_blocked if b}
        self.pm = pluggy.PluginManager("stockade")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        for name in self.blocked:
            self.pm.set_blocked(name)
        # Called first: every plugin registered afterwards gets the call replayed on
        # registration, so the registry knows which plugin added which backend.
        self.pm.hook.stockade_register_backends.call_historic(kwargs={"registry": self.registry})
        if load_entry_points:
            self._load_entry_points()
        for name, plugin in extra:
            self.register(plugin, name)

    def _load_entry_points(self) -> None:
        from .entrypoints import find

        eps: Iterable[Any] | None = find(ENTRY_POINT_GROUP)
        if eps is None:  # a zip on sys.path: only importlib.metadata looks inside
            from importlib.metadata import entry_points

            eps = entry_points(group=ENTRY_POINT_GROUP)
        for ep in eps:
            if ep.name in self.blocked or self.pm.get_plugin(ep.name) is not None:
                continue
            self.register(ep.load(), ep.name)

    def register(self, plugin: ModuleType | object, name: str) -> None:
        """Register a plugin object; its backends are added to the registry under its name."""
        if name in self.blocked:
            return
        # historic calls replay on register: tag the registry with the plugin being added
        self.registry.current_plugin = name
        self.pm.register(plugin, name=name)
        self.registry.current_plugin = "?"

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def make(self, kind: Kind, name: str, config: BackendConfig) -> Backend:
        reg = self.registry.get(kind, name)
        backend: Backend = reg.factory(config)
        return backend


@functools.cache
def default_manager() -> PluginManager:
    """The process-wide manager: entry points are scanned once, not per Host or per call."""
    return PluginManager()
