"""Tables for the commands where people compare rows (rich is imported only here)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from ..spec import format_size

if TYPE_CHECKING:
    from ..host import BackendInfo, Instance, Stats
    from ..interfaces import Snapshot


def _console() -> Console:
    # Piped output is for reading and grepping, not for an 80-column terminal: don't truncate.
    return Console() if sys.stdout.isatty() else Console(width=250)


def _ago(t: float | None) -> str:
    if not t:
        return "-"
    s = int(time.time() - t)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _limits(res: dict[str, object]) -> str:
    parts = []
    if res.get("memory"):
        parts.append(f"mem {format_size(int(str(res['memory'])))}")
    if res.get("cpus"):
        parts.append(f"cpu {res['cpus']}")
    if res.get("pids"):
        parts.append(f"pids {res['pids']}")
    if res.get("disk"):
        parts.append(f"disk {format_size(int(str(res['disk'])))}")
    io = res.get("io")
    if isinstance(io, dict) and io:
        parts.append("io " + ",".join(f"{k}={v}" for k, v in io.items()))
    return " ".join(parts) or "-"


def _state(i: Instance) -> str:
    if i.status == "stopped":
        code = i.exit_status
        return f"exited ({code if code is not None else '?'})"
    return i.status


def instance_table(insts: Sequence[Instance]) -> None:
    t = Table(box=None, header_style="bold")
    for col in ("NAME", "STATE", "BACKENDS", "PID", "CREATED", "LIMITS"):
        t.add_column(col)
    for i in insts:
        b = i.backends
        t.add_row(
            i.name,
            _state(i),
            f"{b.get('isolation')}/{b.get('quota')}/{b.get('storage')}",
            str(i.pid or "-"),
            _ago(i.state.created_at),
            _limits(dict(i.state.spec.get("resources", {}))),
        )
    _console().print(t)


def stats_table(stats: Sequence[Stats]) -> None:
    t = Table(box=None, header_style="bold")
    for col in (
        "NAME",
        "STATE",
        "MEM USED / LIMIT",
        "MEM PEAK",
        "CPU TIME",
        "CPU QUOTA",
        "PIDS",
        "OOM",
        "DISK USED",
    ):
        t.add_column(col, justify="left" if col in ("NAME", "STATE") else "right")
    for s in stats:
        q = s.quota
        mem = (
            f"{format_size(q.memory_used)} / {format_size(q.memory_limit) if q.memory_limit else 'unlimited'}"
        )
        cpu = f"{q.cpu_usage_ns / 1e9:.2f}s" if q.cpu_usage_ns is not None else "-"
        quota = f"{q.cpu_quota:g} cores" if q.cpu_quota else "unlimited"
        pids = f"{q.pids_current if q.pids_current is not None else '-'} / {q.pids_limit or 'max'}"
        disk = format_size(s.storage.used) if s.storage else "-"
        if s.storage and s.storage.quota:
            disk += f" / {format_size(s.storage.quota)}"
        t.add_row(
            s.name,
            s.status,
            mem,
            format_size(q.memory_peak),
            cpu,
            quota,
            pids,
            str(q.oom_kills if q.oom_kills is not None else "-"),
            disk,
        )
    _console().print(t)


def backends_table(infos: Sequence[BackendInfo]) -> None:
    t = Table(box=None, header_style="bold")
    for col in ("KIND", "NAME", "PLUGIN", "PRIORITY", "CAN RUN", "WHY NOT", "FEATURES"):
        t.add_column(col)
    for b in infos:
        t.add_row(
            b.kind,
            b.name,
            b.plugin,
            str(b.priority),
            "[green]yes[/]" if b.probe.ok else "[red]no[/]",
            b.probe.reason or "",
            ", ".join(sorted(f.value for f in b.features)),
        )
    _console().print(t)


def snapshot_table(snaps: Sequence[Snapshot]) -> None:
    t = Table(box=None, header_style="bold")
    for col in ("SNAPSHOT", "CREATED", "SIZE"):
        t.add_column(col)
    for s in snaps:
        t.add_row(s.name, _ago(s.created), format_size(s.size))
    _console().print(t)


def network_table(nets: Sequence[Any]) -> None:
    t = Table(box=None, header_style="bold")
    for col in ("NETWORK", "BRIDGE", "SUBNETS", "GATEWAYS", "ISOLATED", "INSTANCES"):
        t.add_column(col)
    for n in nets:
        t.add_row(
            n.name,
            n.bridge,
            ", ".join(n.subnets),
            ", ".join(n.gateways),
            "yes" if n.isolated else "no",
            ", ".join(str(i.get("name")) for i in n.instances) or "-",
        )
    _console().print(t)
