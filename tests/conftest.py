"""Shared fixtures: every test host gets its own root under /tmp/stockade-test-*, and leaves
nothing behind: its instances are deleted, gc runs, and the test fails if a mount or a
cgroup of that root survives."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT_PREFIX = "stockade-test-"


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, mounts, cgroups)")


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


@pytest.fixture
def root_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    try:
        yield d
    finally:
        from stockade.linux import umount_tree

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
        left = leftovers(root_dir, h.tag)
        assert not left, f"test left host resources behind: {left}"
