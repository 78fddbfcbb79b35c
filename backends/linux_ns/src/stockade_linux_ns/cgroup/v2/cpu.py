"""v2 cpu: cpu.max ("$QUOTA $PERIOD"), cpu.weight; usage from cpu.stat (a core file)."""

from __future__ import annotations

import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "cpu"


def cpu_max(cpus: float, period_us: int) -> str:
    return f"{max(1000, round(cpus * period_us))} {period_us}"


def apply(path: str, res: Resources) -> None:
    if res.cpus is not None:
        fs.write(os.path.join(path, "cpu.max"), cpu_max(res.cpus, res.cpu_period_us))
    if res.cpu_weight is not None:
        fs.write(os.path.join(path, "cpu.weight"), res.cpu_weight)


def usage_ns(path: str) -> int | None:
    # cpu.stat's usage_usec is there even without the cpu controller enabled.
    usec = fs.read_keyed(os.path.join(path, "cpu.stat")).get("usage_usec")
    return None if usec is None else usec * 1000


def stats(path: str) -> dict[str, float | int | None]:
    quota: float | None = None
    try:
        q, _, period = fs.read(os.path.join(path, "cpu.max")).partition(" ")
        if q != fs.MAX and period:
            quota = int(q) / int(period)
    except FileNotFoundError:
        pass
    return {"cpu_usage_ns": usage_ns(path), "cpu_quota": quota}
