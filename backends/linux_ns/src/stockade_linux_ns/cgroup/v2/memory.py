"""v2 memory: memory.max, memory.swap.max (swap only, not memory + swap), memory.low."""

from __future__ import annotations

import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "memory"


def swap_max(memory: int | None, memory_swap: int) -> str:
    """Docker's memory_swap is memory + swap; v2 limits swap alone."""
    if memory_swap == -1 or memory is None:
        return fs.MAX
    return str(max(0, memory_swap - memory))


def has_swap_accounting(path: str) -> bool:
    return fs.exists(os.path.join(path, "memory.swap.max"))


def apply(path: str, res: Resources) -> None:
    if res.memory is not None:
        fs.write(os.path.join(path, "memory.max"), res.memory)
    if res.memory_swap is not None and has_swap_accounting(path):
        memory = res.memory if res.memory is not None else fs.read_int(os.path.join(path, "memory.max"))
        fs.write(os.path.join(path, "memory.swap.max"), swap_max(memory, res.memory_swap))
    if res.memory_reservation is not None:
        fs.write(os.path.join(path, "memory.low"), res.memory_reservation)


def stats(path: str) -> dict[str, int | None]:
    events = fs.read_keyed(os.path.join(path, "memory.events"))
    return {
        "memory_used": fs.read_int(os.path.join(path, "memory.current")),
        "memory_limit": fs.read_int(os.path.join(path, "memory.max")),
        "memory_peak": fs.read_int(os.path.join(path, "memory.peak")),  # 5.19+
        "oom_kills": events.get("oom_kill"),
    }
