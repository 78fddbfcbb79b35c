"""On-disk state of the network layer under ``<root>/networks``: definitions and leases.

``<name>.json`` is a network's definition, ``<name>.leases.json`` its leases (one per
attached instance: addresses, host link, published ports, hosts file). Every change
happens under one flock on ``.lock`` (held for milliseconds: the netlink work runs
outside it), so concurrent creates from several processes never hand out an address
twice. Writes are atomic: temp file, rename. Definitions are also fsynced; leases are
not (that fsync was two thirds of an attach here, and a lease only describes running
instances, which a power loss ends anyway: gc drops the stale ones).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Lease = dict[str, Any]


class Store:
    def __init__(self, root: Path) -> None:
        self.dir = root / "networks"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the lock

    def _def_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _lease_path(self, name: str) -> Path:
        return self.dir / f"{name}.leases.json"

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in self.dir.iterdir()
            if p.name.endswith(".json") and not p.name.endswith(".leases.json")
        )

    def load(self, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = _read(self._def_path(name))
        return found

    def save(self, name: str, definition: dict[str, Any]) -> None:
        _write(self._def_path(name), definition)

    def remove(self, name: str) -> None:
        for p in (self._def_path(name), self._lease_path(name)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    def leases(self, name: str) -> dict[str, Lease]:
        found: dict[str, Lease] | None = _read(self._lease_path(name))
        return found or {}

    def save_leases(self, name: str, leases: dict[str, Lease]) -> None:
        _write(self._lease_path(name), leases, durable=False)


def _read(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _write(path: Path, data: Any, durable: bool = True) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
