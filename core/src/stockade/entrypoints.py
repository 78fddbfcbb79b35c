"""The ``stockade`` entry points, found without importing importlib.metadata.

importlib.metadata costs ~14 ms to import (email, zipfile, csv, ...), and every supervisor
start and every full CLI command pays it before it can load a backend. Entry points are
plain files, ``<dist>.dist-info/entry_points.txt`` (or ``.egg-info``) in a sys.path
directory; this reads them the way importlib.metadata does: sys.path in order, the first
distribution of a (normalized) name wins. A sys.path entry that is not a directory (a zip)
is left to importlib.metadata, which can look inside it.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # "module[:attr.attr]" (extras, if any, already dropped)
    dist: str

    def load(self) -> Any:
        module, _, attrs = self.value.partition(":")
        obj: Any = importlib.import_module(module.strip())
        for attr in filter(None, attrs.strip().split(".")):
            obj = getattr(obj, attr)
        return obj


def _normalize(dist_dir: str) -> str:
    stem = dist_dir.rsplit(".", 1)[0]
    name = stem.split("-", 1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str, group: str, dist: str) -> list[EntryPoint]:
    """The entries of section ``[group]`` of an entry_points.txt."""
    out: list[EntryPoint] = []
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            continue
        if section != group or "=" not in line:
            continue
        name, _, value = line.partition("=")
        value = value.split("[", 1)[0].strip()  # "mod:attr [extra]"
        out.append(EntryPoint(name.strip(), value, dist))
    return out


def find(group: str) -> list[EntryPoint] | None:
    """The group's entry points; None where only importlib.metadata can tell (a zip on sys.path)."""
    seen: set[str] = set()
    out: list[EntryPoint] = []
    for entry in sys.path:
        path = entry or "."
        try:
            names = sorted(os.listdir(path))
        except NotADirectoryError:
            return None
        except OSError:
            continue
        for n in names:
            if not n.endswith(_SUFFIXES):
                continue
            dist = _normalize(n)
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(path, n, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            out.extend(parse(text, group, dist))
    return out
