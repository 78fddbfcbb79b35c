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
        from stockade.linux import umount_tree
        from stockade.supervisor_client import shutdown

        shutdown(str(d / "run"))

        umount_tree(str(d))
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def host(root_dir: Path) -> Iterator[object]:
    from stockade import Host

    h = Host(root_dir)
    try:
        yield h
    finally:
        for inst in h.instances():
            try:
                inst.delete(force=True)
            except Exception as e:  # keep cleaning; the leak check below reports it
                print(f"cleanup of {inst.name} failed: {e}")
        h.gc()
        from stockade.supervisor_client import shutdown

        shutdown(str(h.run_dir))
        left = leftovers(root_dir, h.tag)
        assert not left, f"test left host resources behind: {left}"
