"""On-disk instance state: one JSON file per instance, atomic writes, a per-instance lock.

Layout under a host root::

    <root>/instances/<name>/state.json     persistent state (spec, backends, status, data)
    <root>/logs/<name>.log                 output of a detached instance
    <run>/locks/<name>.lock                flock()ed by every command touching <name>
    <run>/instances/<name>/                runtime files of backends (fifos, hosts files)

Writes go to a temp file, are fsynced and renamed, so a reader (or a command killed
at any point) sees the old state or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import AlreadyExists, NotFound

Status = Literal["creating", "created", "running", "paused", "stopped", "deleting"]
LIVE: frozenset[str] = frozenset({"created", "running", "paused"})


@dataclass
class InstanceState:
    name: str
    id: str
    spec: dict[str, Any]
    backends: dict[str, str]  # kind -> backend name
    status: Status = "creating"
    pid: int | None = None
    pid_start: int | None = None  # start time of pid (clock ticks since boot) to detect reuse
    owner: str = "api"  # who reaps the first process: "api" (this process), "supervisor", "cli"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    exit_status: int | None = None
    rootfs: dict[str, Any] | None = None
    data: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InstanceState:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: tells a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: split after the last ')'
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] == b"Z":  # a zombie has exited; only its parent's wait() is left
        return None
    return int(rest[19])


def pid_alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    st = proc_start_time(pid)
    return st is not None and (start is None or st == start)


def wait_exit(pid: int, timeout: float) -> None:
    """Until process ``pid`` ends or ``timeout`` seconds pass (a pidfd: no polling loop)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


class StateStore:
    def __init__(self, root: Path, run_dir: Path) -> None:
        self.root = root
        self.run_dir = run_dir
        self.instances = root / "instances"
        self.locks = run_dir / "locks"

    def ensure(self) -> None:
        for d in (self.instances, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    def dir(self, name: str) -> Path:
        return self.instances / name

    def log_path(self, name: str) -> Path:
        """Output of a detached instance (kept outside the instance dir: it is opened before
        the name is reserved)."""
        return self.root / "logs" / f"{name}.log"

    def run_dir_of(self, name: str) -> Path:
        return self.run_dir / "instances" / name

    @contextlib.contextmanager
    def lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """Per-instance lock; every command that changes or decides on an instance holds it."""
        self.locks.mkdir(parents=True, exist_ok=True)
        fd = self._acquire(self._lock_path(name), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)

    def _lock_path(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    @staticmethod
    def _acquire(path: Path, how: int) -> int:
        """flock ``path``; -1 if ``how`` has LOCK_NB and it is held. The file is unlinked
        under its lock when its instance goes (``remove``): whoever then gets the lock of
        that old inode finds the path gone or another file there, and tries again."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, how)
                except BlockingIOError:
                    os.close(fd)
                    return -1
                try:
                    current = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
            except BaseException:
                os.close(fd)
                raise
            if current:
                return fd
            os.close(fd)

    def prune_locks(self) -> list[str]:
        """Unlink lock files of names no instance has (left by a crash, or older versions)."""
        pruned: list[str] = []
        try:
            files = [p for p in self.locks.iterdir() if p.suffix == ".lock"]
        except FileNotFoundError:
            return pruned
        for path in files:
            name = path.name[: -len(".lock")]
            if name.startswith(".") or self.dir(name).exists():
                continue  # "." names lock host-wide things (an image import), not an instance
            fd = self._acquire(path, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd < 0:
                continue  # a command is working on that name now
            try:
                if not self.dir(name).exists():
                    path.unlink()
                    pruned.append(name)
            finally:
                os.close(fd)
        return pruned

    def reserve(self, st: InstanceState) -> None:
        """Claim the name atomically (mkdir) and write the first state."""
        self.instances.mkdir(parents=True, exist_ok=True)
        try:
            self.dir(st.name).mkdir()
        except FileExistsError:
            raise AlreadyExists(
                f"instance {st.name!r} already exists: pick another name or delete it first "
                f"(stockade delete {st.name})",
            ) from None
        self.save(st)

    def save(self, st: InstanceState, *, durable: bool = False) -> None:
        """Replace the state file atomically (write, rename).

        Every save survives a crash of the process (kill -9): the rename is atomic. Only
        ``durable`` saves are also fsynced to survive a power loss: the ones that still
        matter after a reboot (an instance came to exist). Runtime transitions (running,
        exited) are about processes a reboot ends anyway, and fsync costs milliseconds.
        """
        path = self.dir(st.name) / "state.json"
        tmp = path.with_name(f".state.json.{os.getpid()}.tmp")
        # compact: json's C encoder is skipped when indent is set (5x slower)
        data = json.dumps(st.to_json(), separators=(",", ":")).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        if durable:
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def load(self, name: str) -> InstanceState:
        try:
            with open(self.dir(name) / "state.json", "rb") as f:
                return InstanceState.from_json(json.load(f))
        except FileNotFoundError:
            raise NotFound(f"no instance named {name!r} (see: stockade list)") from None
        except (ValueError, TypeError) as e:
            raise NotFound(f"instance {name!r} has unreadable state ({e}); run stockade gc") from e

    def exists(self, name: str) -> bool:
        return (self.dir(name) / "state.json").exists()

    def names(self) -> list[str]:
        try:
            return sorted(p.name for p in self.instances.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def remove(self, name: str) -> None:
        import shutil

        # Called under the name's lock: unlinking its file is safe because every locker
        # checks, once it holds a lock, that the file it locked is still the one at the path.
        for d in (self.dir(name), self.run_dir_of(name)):
            shutil.rmtree(d, ignore_errors=True)
        for path in (self.log_path(name), self._lock_path(name)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.ENOENT, errno.EEXIST):
            raise
