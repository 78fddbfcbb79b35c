"""The ``chroot`` isolation backend: fork, chroot into the root file system, chdir, exec.

No namespaces, no capabilities dropped: it isolates the file-system view and nothing
else, so that is all it declares (``features = {FS_ISOLATION}``, no restrictions), and
the conformance suite reports everything else as "not supported".
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import time
from typing import ClassVar

from stockade.errors import IsolationError
from stockade.features import Feature, Probe
from stockade.interfaces import InstanceContext, IsolationBase, JoinFn, Spawned, Stdio
from stockade.spec import Process
from stockade.state import pid_alive, proc_start_time


class ChrootIsolation(IsolationBase):
    name: ClassVar[str] = "chroot"
    priority: ClassVar[int] = 1  # never the default over a backend that isolates more
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.FS_ISOLATION})

    def probe(self) -> Probe:
        if not hasattr(os, "chroot") or os.geteuid() != 0:
            return Probe.no("chroot needs root")
        return Probe.yes()

    def create(self, ctx: InstanceContext, stdio: Stdio, join: JoinFn) -> Spawned:
        if ctx.rootfs is None:
            raise IsolationError(f"instance {ctx.name!r}: no root file system")
        # The first process waits on a pipe until start(); a FIFO lets a later process start it.
        dev = os.path.join(ctx.rootfs.path, "dev")
        for node, minor in (("null", 3), ("zero", 5), ("urandom", 9)):  # what debootstrap makes
            with contextlib.suppress(FileExistsError):
                os.mknod(os.path.join(dev, node), stat.S_IFCHR | 0o666, os.makedev(1, minor))
        fifo = ctx.run_dir / "start.fifo"
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo, 0o600)
        pid = self._fork(ctx, ctx.spec.process, stdio, join, str(fifo))
        ctx.bag("isolation").update(pid=pid, start=proc_start_time(pid), fifo=str(fifo))
        return Spawned(pid)

    def start(self, ctx: InstanceContext) -> None:
        for _ in range(500):  # the child may not have opened the FIFO yet (ENXIO): wait for it
            try:
                fd = os.open(ctx.bag("isolation")["fifo"], os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as e:
                if e.errno != errno.ENXIO or not self.is_alive(ctx):
                    raise IsolationError(f"instance {ctx.name!r}: cannot start: {e}") from e
                time.sleep(0.01)
        else:
            raise IsolationError(f"instance {ctx.name!r}: its first process never waited for start")
        try:
            os.write(fd, b"go")
        finally:
            os.close(fd)

    def exec(self, ctx: InstanceContext, process: Process, stdio: Stdio, join: JoinFn) -> Spawned:
        return Spawned(self._fork(ctx, process, stdio, join, None))

    def _fork(self, ctx: InstanceContext, p: Process, stdio: Stdio, join: JoinFn, fifo: str | None) -> int:
        assert ctx.rootfs is not None
        pid = os.fork()
        if pid:
            return pid
        try:  # the child: never returns
            os.setsid()  # its own process group, so kill and destroy reach its children
            join(os.getpid())
            for fd, target in ((stdio.stdin, 0), (stdio.stdout, 1), (stdio.stderr, 2)):
                if fd is not None:
                    os.dup2(fd, target)
            # Inherited descriptors (the Host's state lock among them) must not live on.
            wait_fd = os.open(fifo, os.O_RDWR) if fifo else -1  # RDWR: no EOF before start()
            os.closerange(3, wait_fd if wait_fd > 3 else 3)
            os.closerange(max(wait_fd, 2) + 1, os.sysconf("SC_OPEN_MAX"))
            if wait_fd >= 0:
                os.read(wait_fd, 2)
                os.close(wait_fd)
            os.chroot(ctx.rootfs.path)
            os.chdir(p.cwd)
            os.setgroups(list(p.additional_gids))
            os.setgid(p.gid)
            os.setuid(p.uid)
            os.umask(p.umask)
            os.execve(_which(p.args[0], p.env.get("PATH", "/bin")), list(p.args), dict(p.env))
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(2, f"chroot: {p.args[0]}: {e}\n".encode())
        os._exit(127)

    def kill(self, ctx: InstanceContext, signal: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ctx.bag("isolation")["pid"], signal)

    def is_alive(self, ctx: InstanceContext) -> bool:
        bag = ctx.bag("isolation")
        return bool(bag.get("pid")) and pid_alive(bag["pid"], bag.get("start"))

    def destroy(self, ctx: InstanceContext) -> None:
        bag = ctx.bag("isolation")
        if bag.get("pid"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(bag["pid"], signal.SIGKILL)
        if bag.get("fifo"):
            with contextlib.suppress(OSError):
                os.unlink(bag["fifo"])


def _which(cmd: str, path: str) -> str:
    """Resolve ``cmd`` on PATH as seen from inside the new root (we are chrooted already)."""
    if "/" in cmd:
        return cmd
    return next((f"{d}/{cmd}" for d in path.split(":") if os.access(f"{d}/{cmd}", os.X_OK)), cmd)
