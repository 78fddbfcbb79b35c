"""Shared fixtures: every test host gets its own root under /tmp/stockade-test-*, and leaves
nothing behind: its instances are deleted, gc runs, and the test fails if a mount or a
cgroup of that root survives."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import leftovers

ROOT_PREFIX = "stockade-test-"


@pytest.fixture
def root_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    try:
        yield d
    finally:
        left = _clean_root(d)
        from stockade.linux import umount_tree

        umount_tree(str(d))
        shutil.rmtree(d, ignore_errors=True)
    assert not left, f"test left host resources behind: {left}"


def _clean_root(d: Path) -> list[str]:
    """Delete what a test left in root ``d`` (a failed test too: its instances' processes
    would outlive the directory), stop its supervisor; return what could not be removed."""
    from stockade import Host
    from stockade.supervisor_client import shutdown

    h = Host(d)
    for inst in h.instances():
        try:
            inst.delete(force=True)
        except Exception as e:  # keep cleaning; the leak check reports it
            print(f"cleanup of {inst.name} failed: {e}")
    h.gc()
    shutdown(str(h.run_dir))
    return leftovers(d, h.tag)


@pytest.fixture
def host(root_dir: Path) -> Iterator[object]:
    from stockade import Host

    yield Host(root_dir)
