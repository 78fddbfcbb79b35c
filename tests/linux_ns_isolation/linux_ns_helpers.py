"""Helpers for the linux_ns isolation tests (imported by conftest and the tests)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from stockade.interfaces import InstanceContext, RootFS, Stdio
from stockade.spec import InstanceSpec
from stockade_linux_ns.isolation import LinuxNsIsolation

# Lets a test run the host's Python inside the busybox root (for syscall probes).
HOST_USR = [{"target": "/usr", "source": "/usr", "readonly": True}]


class Instances:
    """Makes contexts and guarantees every instance made through it is destroyed."""

    def __init__(self, backend: LinuxNsIsolation, image: Path, base: Path) -> None:
        self.backend = backend
        self.image = image
        self.base = base
        self.made: list[InstanceContext] = []

    def ctx(self, rootfs: Path | None = None, **spec: Any) -> InstanceContext:
        spec.setdefault("name", f"t{len(self.made)}-{os.getpid()}")
        s = InstanceSpec.from_dict(spec)
        c = InstanceContext(
            id=s.name,
            name=s.name,
            spec=s,
            config=self.backend.config,
            state_dir=self.base / "state" / s.name,
            run_dir=self.base / "run" / s.name,
            rootfs=RootFS(path=str(rootfs or self.image)),
        )
        self.made.append(c)
        return c

    def create(self, ctx: InstanceContext, stdio: Stdio | None = None) -> int:
        return self.backend.create(ctx, stdio or Stdio(), lambda pid: None).pid

    def run(self, timeout: float = 30.0, **spec: Any) -> tuple[int, str]:
        """create + start + wait; returns (exit code, stdout+stderr)."""
        ctx = self.ctx(**spec)
        r, w = os.pipe()
        try:
            pid = self.backend.create(ctx, Stdio(stdout=w, stderr=w), lambda pid: None).pid
        finally:
            os.close(w)
        self.backend.start(ctx)
        out = read_all(r, timeout)
        _, status = os.waitpid(pid, 0)
        self.backend.destroy(ctx)
        return os.waitstatus_to_exitcode(status), out

    def cleanup(self) -> None:
        for c in self.made:
            self.backend.destroy(c)


def read_all(fd: int, timeout: float) -> str:
    import select

    out = b""
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise TimeoutError(f"no EOF within {timeout}s; got {out!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                return out.decode(errors="replace")
            out += chunk
    finally:
        os.close(fd)


def live_children() -> set[int]:
    """Pids whose parent is this process (zombies reaped first)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    me = str(os.getpid())
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2 :].split()[1] == me:
                out.add(int(entry))
    return out


# Children this process already had when the module's first test began (other test modules
# in the same pytest run, e.g. a migration target's orphans): not this module's business.
BASELINE: set[int] = set()


def assert_no_children() -> None:
    """The instance's processes are our children (we are their subreaper): none may be left."""
    left = live_children() - BASELINE
    assert not left, f"child processes still running: {sorted(left)}"
