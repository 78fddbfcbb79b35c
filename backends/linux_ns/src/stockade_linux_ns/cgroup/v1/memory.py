"""v1 memory: limit_in_bytes, memsw.limit_in_bytes (memory + swap), soft_limit_in_bytes."""

from __future__ import annotations

import errno
import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "memory"
# v1 reports "no limit" as the largest page-aligned long, not as a word.
UNLIMITED_FROM = 1 << 62


def has_swap_accounting(path: str) -> bool:
    return fs.exists(os.path.join(path, "memory.memsw.limit_in_bytes"))


def apply(path: str, res: Resources) -> None:
    limit = res.memory
    memsw = res.memory_swap if has_swap_accounting(path) else None
    f_limit = os.path.join(path, "memory.limit_in_bytes")
    f_memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
    if limit is not None and memsw is not None:
        # The kernel keeps limit <= memsw at every step: which file goes first depends on
        # whether the new pair is above or below the current one.
        try:
            fs.write(f_limit, limit)
            fs.write(f_memsw, memsw)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            fs.write(f_memsw, memsw)
            fs.write(f_limit, limit)
    elif limit is not None:
        fs.write(f_limit, limit)
    elif memsw is not None:
        fs.write(f_memsw, memsw)
    if res.memory_reservation is not None:
        fs.write(os.path.join(path, "memory.soft_limit_in_bytes"), res.memory_reservation)


def _limit(value: int | None) -> int | None:
    return None if value is None or value >= UNLIMITED_FROM else value


def stats(path: str) -> dict[str, int | None]:
    oom = fs.read_keyed(os.path.join(path, "memory.oom_control"))
    return {
        "memory_used": fs.read_int(os.path.join(path, "memory.usage_in_bytes")),
        "memory_limit": _limit(fs.read_int(os.path.join(path, "memory.limit_in_bytes"))),
        "memory_peak": fs.read_int(os.path.join(path, "memory.max_usage_in_bytes")),
        "oom_kills": oom.get("oom_kill"),
    }
