"""Which process is an instance's PID 1, robust against pid reuse.

A pid alone can name a different process after the instance died; the pair
(pid, start time in clock ticks since boot, field 22 of /proc/<pid>/stat) cannot.
"""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (after the command name), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def is_same_and_alive(pid: int, started: int) -> bool:
    fields = stat_fields(pid)
    if fields is None or int(fields[19]) != started:
        return False
    return fields[0] not in ("Z", "X")


def open_pidfd(pid: int, started: int) -> int | None:
    """A pidfd for the process if it is still the one that started at ``started``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    # Checked after opening: the pidfd pins the process, so the check cannot go stale.
    if start_time(pid) != started:
        os.close(fd)
        return None
    return fd
