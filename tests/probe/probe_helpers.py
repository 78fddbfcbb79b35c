"""Helpers shared by the probe tests (a uniquely named module: conftest is not importable)."""

from __future__ import annotations

import glob
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from stockade.testing.probe import ProbeResult

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (real kernel checks)")


@dataclass
class ProbeRun:
    results: dict[str, ProbeResult]
    facts: dict[str, str]
    stdout: str
    stderr: str

    def verdict(self, check: str) -> str:
        return self.results[check].verdict


RunProbe = Callable[..., ProbeRun]


# --- host state ---------------------------------------------------------------------------

WRITE_BACK_FILES = (
    "/proc/sys/kernel/printk_ratelimit",
    "/proc/sys/vm/overcommit_ratio",
    "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan",
    "/sys/kernel/mm/ksm/pages_to_scan",
    "/sys/module/printk/parameters/time",
)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def host_state() -> dict[str, object]:
    """Everything the probe touches on the host, to compare before and after a run."""
    mountinfo = _read("/proc/self/mountinfo") or ""
    state: dict[str, object] = {p: _read(p) for p in WRITE_BACK_FILES}
    for agent in sorted(glob.glob("/sys/fs/cgroup/*/release_agent")):
        state[agent] = _read(agent)
    state["probe_mounts"] = [
        line for line in mountinfo.splitlines() if "stockade-probe" in line or "stockade_probe" in line
    ]
    state["leftover_files"] = sorted(
        glob.glob("/tmp/stockade-probe-*")
        + glob.glob("/tmp/.stockade-probe-*")
        + glob.glob("/.stockade-probe-*")
        + glob.glob("/stockade-probe-*")
    )
    routes = subprocess.run(
        ["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True, check=False
    ).stdout
    state["test_route"] = [line for line in routes.splitlines() if "240.84.84.84" in line]
    state["lo_flags"] = _read("/sys/class/net/lo/flags")
    return state


def diff_state(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    return {k: (before.get(k), after.get(k)) for k in before | after if before.get(k) != after.get(k)}


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in (_read(f"/proc/{pid}/status") or "").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields
