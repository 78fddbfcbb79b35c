"""Running things inside instances of the subject, and looking at the host from outside.

Everything the suite measures goes through the public Host API (create, start, wait,
run, delete) so that a backend is tested exactly as users drive it; what the suite
checks on the host (processes, mounts, cgroups, links) it reads from the kernel.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotFound, UnsupportedFeature
from ..host import Instance
from ..interfaces import Stdio
from .outcomes import not_supported
from .subject import Subject


@dataclass(frozen=True)
class Output:
    status: int
    stdout: str
    stderr: str


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def create(subject: Subject, spec: Mapping[str, object], stdio: Stdio | None = None) -> Instance:
    """host.create; a feature the combination lacks (UnsupportedFeature) is "not supported"."""
    try:
        return subject.host.create(dict(spec), stdio=stdio)
    except UnsupportedFeature as e:
        not_supported(str(e))


def run_once(
    subject: Subject, args: list[str], *, timeout: float = 60, prefix: str = "run", **extra: Any
) -> Output:
    """Create an instance whose first process is ``args``, run it to the end, delete it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        spec = subject.spec(unique(prefix), args, **extra)
        inst = create(subject, spec, Stdio(stdin=None, stdout=out.fileno(), stderr=err.fileno()))
        try:
            inst.start()
            try:
                status = inst.wait(timeout=timeout)
            except TimeoutError:
                raise AssertionError(f"{args[0]} in {inst.name!r} did not finish in {timeout}s") from None
        finally:
            inst.delete(force=True)
        out.seek(0)
        err.seek(0)
        return Output(status, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def sh(subject: Subject, script: str, *, timeout: float = 60, **extra: Any) -> Output:
    return run_once(subject, ["/bin/sh", "-c", script], timeout=timeout, **extra)


@contextlib.contextmanager
def running(
    subject: Subject, args: list[str] | None = None, *, prefix: str = "inst", **extra: Any
) -> Iterator[Instance]:
    """A started instance (default process: a long sleep); deleted on exit, even on failure."""
    # Separate plain files, as a detached instance has: CRIU must be able to reopen them.
    name = unique(prefix)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    subject.suite_dir.mkdir(exist_ok=True)
    log = os.open(
        subject.suite_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
    )
    try:
        spec = subject.spec(name, args or ["/bin/sleep", "3600"], **extra)
        inst = create(subject, spec, Stdio(null, log, log))
    finally:
        os.close(null)
        os.close(log)
    try:
        inst.start()
        yield inst
    finally:
        # a test may have moved it away (migration) or deleted it itself
        with contextlib.suppress(NotFound):
            inst.delete(force=True)


# --- the host's view, from the kernel ---------------------------------------------------


def pids_with(token: str) -> list[int]:
    """Host pids whose command line carries ``token`` (processes the suite started inside)."""
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if token.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (the kernel's counters), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / tick


def cpu_rate(token: str, window: float) -> float:
    """Cores used by the processes carrying ``token`` over ``window`` seconds of wall clock."""
    pids = pids_with(token)
    c0, t0 = cpu_seconds(pids), time.monotonic()
    time.sleep(window)
    c1, t1 = cpu_seconds(pids), time.monotonic()
    return (c1 - c0) / (t1 - t0)


def wait_for(cond: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(0.02)
    return False


def _under(path: str, root: Path) -> bool:
    top = str(root).rstrip("/")
    return path == top or path.startswith(top + "/")


def loop_devices_under(root: Path) -> set[str]:
    """Loop devices whose backing file is below ``root`` (a deleted one too: the kernel keeps
    the name it had, with " (deleted)")."""
    found: set[str] = set()
    block = Path("/sys/block")
    for dev in block.glob("loop*") if block.is_dir() else []:
        try:
            backing = (dev / "loop" / "backing_file").read_text().strip()
        except OSError:  # not attached (no loop/ directory)
            continue
        if _under(backing.removesuffix(" (deleted)"), root):
            found.add(f"loop /dev/{dev.name} ({backing})")
    return found


def host_resources(root: Path, tag: str, ident: str | None = None) -> set[str]:
    """Host resources that carry this root (mounts, loop devices backed by a file below it),
    its tag or ``ident`` (cgroups, links, netns).

    Links are matched by name or IFLA_IFALIAS (stockade writes ``stockade:<tag>:...``), net
    namespaces by their name under /run/netns.
    """
    keys = [k for k in (tag, ident) if k]
    found: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            mp = parts[4]
            if _under(mp, root):
                found.add(f"mount {mp}")
    found |= loop_devices_under(root)
    cg = Path("/sys/fs/cgroup")
    if cg.is_dir():
        for dirpath, dirnames, _ in os.walk(cg):
            base = os.path.basename(dirpath)
            if any(k in base for k in keys) and dirpath != str(cg):
                found.add(f"cgroup {dirpath}")
                dirnames.clear()
            elif dirpath.count("/") > 10:
                dirnames.clear()
    net = Path("/sys/class/net")
    for link in net.iterdir() if net.is_dir() else []:
        alias = ""
        with contextlib.suppress(OSError):
            alias = (link / "ifalias").read_text().strip()
        if any(k in link.name or k in alias for k in keys):
            found.add(f"link {link.name}")
    netns = Path("/run/netns")
    for ns in netns.iterdir() if netns.is_dir() else []:
        if any(k in ns.name for k in keys):
            found.add(f"netns {ns.name}")
    return found


def tree_listing(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """Every path below ``root`` (relative; directories end in "/"), across the file systems
    mounted there, symlinks not followed; ``skip``: top-level entries left out."""
    out: set[str] = set()
    top = str(root)

    def ignore(_e: OSError) -> None:  # gone while walking: it is not there
        return None

    for dirpath, dirnames, filenames in os.walk(top, onerror=ignore):
        rel = os.path.relpath(dirpath, top)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
            out.update(f for f in filenames if f not in skip)
        else:
            out.add(rel + "/")
            out.update(f"{rel}/{f}" for f in filenames)
    return out


def proc_root_under(path: str) -> list[int]:
    """Host pids whose root directory is ``path`` or below (processes still in an instance)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            r = os.readlink(f"/proc/{entry}/root")
            if r == path or r.startswith(path.rstrip("/") + "/"):
                out.append(int(entry))
    return out
