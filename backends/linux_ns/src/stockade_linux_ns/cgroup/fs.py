"""The only place that touches cgroup files: small reads and single-syscall writes.

cgroup files take one value per write(2) (a buffered writer may split or merge), so
writes go through ``os.write`` on a fresh descriptor. Everything above this module
works on path strings and can be pointed at a plain directory in tests. Errors stay
``OSError`` carrying the path; the backend translates them per operation.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

MAX = "max"  # v2 spelling of "no limit"


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def read_int(path: str) -> int | None:
    """An integer file; None for v2's "max" and for files that are absent."""
    try:
        text = read(path)
    except FileNotFoundError:
        return None
    if text == MAX:
        return None
    return int(text.split()[0])


def read_keyed(path: str) -> dict[str, int]:
    """A flat "key value" file (memory.events, cpu.stat, memory.oom_control); {} if absent."""
    out: dict[str, int] = {}
    try:
        text = read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def write(path: str, value: str | int) -> None:
    data = str(value).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    except OSError as e:
        raise OSError(
            e.errno, f"write {data.decode()!r} to {path}: {os.strerror(e.errno or 0)}", path
        ) from None
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    return os.path.exists(path)


def mkdir(path: str) -> bool:
    """Create one directory; False if it was already there."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return False
    return True


def rmdir(path: str) -> bool:
    """Remove one empty cgroup; False if it was already gone."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return False
    return True


def children(path: str) -> list[str]:
    """Names of the child cgroups of ``path``; [] if it does not exist."""
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def walk_down(path: str) -> Iterator[str]:
    """``path`` and every cgroup below it, parents first."""
    yield path
    for name in children(path):
        yield from walk_down(os.path.join(path, name))


def procs(path: str) -> list[int]:
    """Pids in one cgroup (not its children); [] if it is gone."""
    try:
        text = read(os.path.join(path, "cgroup.procs"))
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def is_missing(e: OSError) -> bool:
    return e.errno in (errno.ENOENT, errno.ENODEV)
