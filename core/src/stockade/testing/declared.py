"""What the chosen backends declare, read from their classes without building a host root.

The suite decides "not supported" from declarations alone, so an undeclared feature is
reported as such even on a machine where the backend cannot run at all.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import StockadeError
from ..features import Feature, Restriction, Semantics
from ..interfaces import KINDS, Kind
from ..plugins import default_manager
from .subject import BackendChoice


@dataclass(frozen=True)
class Declared:
    """Each kind's backend class (None when none was named and none can run here)."""

    choice: BackendChoice
    classes: dict[Kind, type[Any] | None] = field(default_factory=dict)
    problems: dict[Kind, str] = field(default_factory=dict)

    def name(self, kind: Kind) -> str:
        cls = self.classes.get(kind)
        return str(getattr(cls, "name", None) or getattr(self.choice, kind) or "?")

    @property
    def label(self) -> str:
        base = "+".join(self.name(k) for k in KINDS)
        opts = option_words(self.choice.options)
        return f"{base} ({' '.join(opts)})" if opts else base

    def known(self) -> bool:
        return all(self.classes.get(k) is not None for k in KINDS)

    def features_of(self, kind: Kind) -> frozenset[Feature]:
        return frozenset(getattr(self.classes.get(kind), "features", frozenset()))

    def declares(self, feature: Feature) -> list[str]:
        return [f"{k} {self.name(k)!r}" for k in KINDS if feature in self.features_of(k)]

    @property
    def restrictions(self) -> frozenset[Restriction]:
        return frozenset(getattr(self.classes.get("isolation"), "restrictions", frozenset()))

    @property
    def relaxable(self) -> frozenset[Restriction]:
        return frozenset(getattr(self.classes.get("isolation"), "relaxable", frozenset()))

    def semantics(self, kind: Kind) -> Semantics:
        sem = getattr(self.classes.get(kind), "semantics", None)
        return sem if isinstance(sem, Semantics) else Semantics()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label, "backends": {}}
        for k in KINDS:
            cls = self.classes.get(k)
            sem = self.semantics(k)
            out["backends"][k] = {
                "name": self.name(k),
                "features": sorted(str(f) for f in self.features_of(k)),
                "semantics": {
                    "quota_scope": sem.quota_scope,
                    "io_limit_on": sem.io_limit_on,
                    "restore": sem.restore,
                    "migration": sem.migration,
                    "memory_tolerance": sem.memory_tolerance,
                },
                "problem": self.problems.get(k),
                "found": cls is not None,
            }
        out["restrictions"] = sorted(str(r) for r in self.restrictions)
        out["relaxable"] = sorted(str(r) for r in self.relaxable)
        return out


def declared_of(choice: BackendChoice) -> Declared:
    """Resolve the choice to backend classes: by name from the registry, else by probing."""
    plugins = choice.plugins or default_manager()
    classes: dict[Kind, type[Any] | None] = {}
    problems: dict[Kind, str] = {}
    for kind in KINDS:
        name = getattr(choice, kind)
        try:
            from ..host import Host

            # what a factory makes can depend on its options (overlay's quota mode is
            # another class that declares more): ask an instance, not the registered factory
            with tempfile.TemporaryDirectory(prefix="stockade-test-declared-") as tmp:
                host = Host(tmp, plugins=plugins, options=choice.options)
                backend = host.backend(kind, name) if name else host.choose(kind)
                classes[kind] = type(backend)
        except StockadeError as e:
            classes[kind] = None
            problems[kind] = str(e)
    return Declared(choice, classes, problems)


def option_words(options: Mapping[str, Mapping[str, object]]) -> list[str]:
    """``BACKEND.KEY=VALUE`` words for backend options, as ``--option`` takes them."""
    return [
        f"{b}.{k}={v if isinstance(v, str) else json.dumps(v)}"
        for b, opts in sorted(options.items())
        for k, v in sorted(opts.items())
    ]


def parse_option(word: str) -> tuple[str, str, object]:
    """``BACKEND.KEY=VALUE`` -> (backend, key, value); VALUE is JSON if it parses as JSON
    (numbers, true/false, lists), else the string itself."""
    name, eq, raw = word.partition("=")
    backend, dot, key = name.partition(".")
    if not eq or not dot or not backend or not key:
        raise ValueError(f"backend option {word!r}: write BACKEND.KEY=VALUE, e.g. overlay.quota_fs=btrfs")
    try:
        value: object = json.loads(raw)
    except ValueError:
        value = raw
    return backend, key, value


def options_of(words: Iterable[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for word in words:
        backend, key, value = parse_option(word)
        out.setdefault(backend, {})[key] = value
    return out
