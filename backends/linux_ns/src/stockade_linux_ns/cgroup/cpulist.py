"""The kernel's list format for CPUs and memory nodes: "0-3,8,10-11"."""

from __future__ import annotations


def parse(text: str) -> frozenset[int]:
    """'0-2,5' -> {0, 1, 2, 5}. Raises ValueError on anything else."""
    out: set[int] = set()
    for raw in text.strip().split(","):
        part = raw.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list like '0-3,8'")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{text!r}: range {part!r} goes backwards")
        out.update(range(first, last + 1))
    return frozenset(out)
