"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
from pathlib import Path


def leftovers(root: Path, tag: str) -> list[str]:
    """Host resources of a test root still present: mounts below it, cgroups with its tag."""
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp.startswith(str(root)):
                found.append(f"mount {mp}")
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(dirpath) == tag and "stockade" in dirpath:
            found.append(f"cgroup {dirpath} ({len(dirnames)} children)")
            dirnames.clear()
        elif dirpath.count("/") > 9:
            dirnames.clear()
    return found
