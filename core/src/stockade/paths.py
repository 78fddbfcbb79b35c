"""Where a host root keeps things. Stdlib only: the thin CLI path imports it."""

from __future__ import annotations

import os

DEFAULT_ROOT = "/var/lib/stockade"
DEFAULT_RUN_DIR = "/run/stockade"


def root_of(root: str | os.PathLike[str] | None) -> str:
    return os.path.abspath(os.fspath(root)) if root else DEFAULT_ROOT


def run_dir_of(root: str) -> str:
    """Runtime state: /run/stockade for the default root, <root>/run for any other."""
    return DEFAULT_RUN_DIR if root == DEFAULT_ROOT else os.path.join(root, "run")


def supervisor_socket(run_dir: str) -> str:
    return os.path.join(run_dir, "supervisor.sock")
