"""Spare network, IPC and UTS namespaces for the next instance of a warm host.

A new network namespace costs ~0.5 ms to create (loopback device, per-namespace sysctl
tables, ...); entering one that exists costs ~30 us. A warm host (the supervisor) makes
one spare set while an instance's first process sets itself up, time the caller would
spend waiting anyway, and the next first process enters it instead of unsharing.

A spare is as new as an unshared one: nothing has run in it, nothing else holds it, and
it is used once. It exists only as an fd of this process (no bind mount, nothing in
``ip netns``), so it goes when the pool is closed or the process ends. Only for instances
without a user namespace: the namespaces would have to belong to that one.
"""

from __future__ import annotations

import os

from . import syscalls

# (name in /proc/<pid>/ns, clone flag)
KINDS = (
    ("net", syscalls.CLONE_NEWNET),
    ("ipc", syscalls.CLONE_NEWIPC),
    ("uts", syscalls.CLONE_NEWUTS),
)
FLAGS = syscalls.CLONE_NEWNET | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS


class NamespacePool:
    def __init__(self) -> None:
        self._spare: list[int] | None = None  # fds, in KINDS order
        self._broken = False

    def take(self) -> list[tuple[int, int]]:
        """The spare set as (fd, clone flag) pairs, now the caller's to close; [] if none."""
        spare, self._spare = self._spare, None
        return [] if spare is None else [(fd, flag) for fd, (_, flag) in zip(spare, KINDS, strict=True)]

    def refill(self) -> None:
        """Make a spare set if there is none. The calling thread unshares and then returns
        to its own namespaces (unshare and setns act on the calling thread alone)."""
        if self._spare is not None or self._broken:
            return
        own = [os.open(f"/proc/thread-self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC) for name, _ in KINDS]
        made: list[int] = []
        try:
            try:
                syscalls.unshare(FLAGS)
            except OSError:
                self._broken = True  # not allowed here: instances unshare as before
                return
            try:
                made = [os.open(f"/proc/thread-self/ns/{n}", os.O_RDONLY | os.O_CLOEXEC) for n, _ in KINDS]
            finally:
                for fd, (name, flag) in zip(own, KINDS, strict=True):
                    # Failing here would leave this thread's sockets and hostname in the
                    # spare: never carry on like that.
                    syscalls.setns(fd, flag, f"{name} namespace (back to our own)")
            self._spare, made = made, []
        finally:
            for fd in own + made:
                os.close(fd)

    def close(self) -> None:
        for fd, _ in self.take():
            os.close(fd)
