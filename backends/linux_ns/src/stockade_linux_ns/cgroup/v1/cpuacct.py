"""v1 cpuacct: CPU time used by the instance (cpuacct.usage, nanoseconds)."""

from __future__ import annotations

import os

from .. import fs

CONTROLLER = "cpuacct"


def usage_ns(path: str) -> int | None:
    return fs.read_int(os.path.join(path, "cpuacct.usage"))


def stats(path: str) -> dict[str, int | None]:
    return {"cpu_usage_ns": usage_ns(path)}
