"""Helpers of the cgroup tests (tests/ is on pytest's pythonpath; test files cannot import
each other under --import-mode=importlib)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest


def _cgroup_mounted(fstype: str) -> bool:
    try:
        with open("/proc/self/mountinfo") as f:
            return any(f" - {fstype} " in line for line in f)
    except OSError:
        return False


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroup tests need root")
needs_v1 = pytest.mark.skipif(not _cgroup_mounted("cgroup"), reason="no cgroup v1 hierarchy")
needs_v2 = pytest.mark.skipif(not _cgroup_mounted("cgroup2"), reason="no cgroup2 mount")


Make = Callable[..., Any]


def paths(ctx: Any) -> dict[str, str]:
    """controller -> the instance's directory, from what create stored ("unified" for v2 core)."""
    out: dict[str, str] = {}
    for g in ctx.data["quota"]["groups"]:
        for c in g["controllers"] or ["unified"]:
            out.setdefault(c if g["version"] == 1 else f"v2:{c}", g["path"])
        if g["version"] == 2:
            out["unified"] = g["path"]
    return out


def read(path: str, name: str) -> str:
    with open(os.path.join(path, name)) as f:
        return f.read().strip()
