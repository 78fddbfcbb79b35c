"""Helpers shared by the tests (importable: tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from stockade import Host


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


def fill(path: Path, limit: int) -> tuple[int, int | None]:
    """Write random data to ``path`` in 1 MiB chunks until an error or ``limit``: (bytes
    written, errno). Each chunk is synced, or delayed allocation reports the quota late."""
    chunk = os.urandom(1 << 20)
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while written < limit:
            try:
                written += os.write(fd, chunk)
                os.fsync(fd)
            except OSError as e:
                return written, e.errno
    finally:
        with contextlib.suppress(OSError):  # close may report the quota error again
            os.close(fd)
    return written, None


def discard_host(host: Host) -> None:
    """A host fixture's teardown: force-delete what a test left, gc, close."""
    for inst in host.instances():
        inst.delete(force=True)
    host.gc()
    host.close()
