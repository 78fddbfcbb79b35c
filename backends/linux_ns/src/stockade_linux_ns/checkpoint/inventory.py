"""What a running instance holds, read from /proc: its tasks, mounts and open files.

CRIU can recreate everything that lives inside the instance's namespaces. What points
out of them (a bind mount of a host file, a host file or pipe held as stdio, a socket to
a host process, a terminal whose master is on the host) must be named as *external* at
dump and handed back at restore. This module finds those, and says (preflight) what no
option can carry.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

# File systems CRIU mounts again itself from their images (or that have no content).
VIRTUAL_FS = frozenset(
    {
        "proc",
        "sysfs",
        "tmpfs",
        "devpts",
        "mqueue",
        "cgroup",
        "cgroup2",
        "binfmt_misc",
        "securityfs",
        "debugfs",
        "tracefs",
        "bpf",
        "configfs",
        "pstore",
        "fusectl",
        "hugetlbfs",
    }
)


@dataclass(frozen=True)
class MountInfo:
    id: int
    parent: int
    dev: str
    root: str
    point: str
    fstype: str
    source: str


@dataclass
class Inventory:
    pids: list[int]  # every task of the instance (host pids), PID 1 first
    mounts: list[MountInfo]
    ext_mounts: dict[str, str] = field(default_factory=dict)  # mount point inside -> key
    ext_files: dict[str, str] = field(default_factory=dict)  # file[...] / pipe:[...] key -> role
    ext_modes: dict[str, int] = field(default_factory=dict)  # file[...] key -> its permission bits
    problems: list[str] = field(default_factory=list)
    netns_inode: int | None = None
    tcp: int = 0  # established TCP sockets
    inet_listen: int = 0  # TCP sockets held by the tasks, listening
    inet_other: int = 0  # other TCP/UDP/raw IP sockets held by the tasks


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return out


def tree(pid1: int) -> list[int]:
    seen: list[int] = []
    todo = [pid1]
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.append(p)
        todo.extend(children(p))
    return seen


def mounts_of(pid: int) -> list[MountInfo]:
    out = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            a, _, b = line.partition(" - ")
            pa, pb = a.split(), b.split()
            out.append(
                MountInfo(
                    int(pa[0]),
                    int(pa[1]),
                    pa[2],
                    _unescape(pa[3]),
                    _unescape(pa[4]),
                    pb[0],
                    pb[1] if len(pb) > 1 else "",
                )
            )
    return out


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _fdinfo(pid: int, fd: str) -> dict[str, str]:
    out = {}
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = v.strip()
    except OSError:
        pass
    return out


def _within(path: str, top: str) -> bool:
    return top in ("/", path) or path.startswith(top.rstrip("/") + "/")


def external_mounts(mounts: list[MountInfo]) -> dict[str, str]:
    """Mount point -> key for every mount CRIU cannot make again from inside.

    CRIU re-creates the instance's root, a virtual file system mounted whole, and a bind
    mount of a part of either (same device, its root inside theirs). Any other mount shows
    a file system, or a part of one, that nothing mounted in the instance reaches: a host
    file bound in, which must be named external. On a storage whose root is a plain
    directory of the host's file system (``dir``) such binds (``/etc/hosts`` from the run
    directory) share the root's device; their root outside the root mount's tells them apart
    (CRIU: "doesn't have a proper root mount").
    """
    whole = [m for m in mounts if m.point == "/" or (m.fstype in VIRTUAL_FS and m.root == "/")]
    out: dict[str, str] = {}
    for m in mounts:
        if m.point == "/":
            continue
        if any(w.dev == m.dev and _within(m.root, w.root) for w in whole):
            continue
        out[m.point] = "stk" + m.point.replace("/", "_")
    return out


def collect(pid1: int) -> Inventory:
    pids = tree(pid1)
    mounts = mounts_of(pid1)
    inv = Inventory(pids=pids, mounts=mounts)
    inv.ext_mounts = external_mounts(mounts)
    inside = {m.id for m in mounts}
    try:
        inv.netns_inode = os.stat(f"/proc/{pid1}/ns/net").st_ino
    except OSError:
        inv.netns_inode = None
    # pipe inode -> ends ("r"/"w") held inside; an end missing inside means the pipe leads out
    pipes: dict[int, set[str]] = {}
    pipe_roles: dict[int, str] = {}
    sockets: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            info = _fdinfo(pid, fd)
            if link.startswith("pipe:["):
                flags = int(info.get("flags", "0"), 8)
                pipes.setdefault(st.st_ino, set()).add("w" if flags & os.O_WRONLY else "r")
                pipe_roles.setdefault(st.st_ino, _role(fd, "w" if flags & os.O_WRONLY else "r"))
                continue
            if link.startswith("/"):
                mnt = int(info.get("mnt_id", "-1"))
                if mnt not in inside:
                    if stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in (136, 4, 5):
                        inv.problems.append(
                            f"pid {pid} fd {fd} is the host terminal {link}: instances with a terminal "
                            "from the host cannot be checkpointed (run them detached)"
                        )
                        continue
                    key = f"file[{mnt:x}:{st.st_ino:x}]"
                    # criu re-opens an inherited fd whose flags differ from the dumped one's
                    # (and /proc/self/fd links refuse that): keep the access mode and O_APPEND.
                    raw = int(info.get("flags", "0"), 8)
                    if raw & os.O_NOFOLLOW:
                        inv.problems.append(
                            f"pid {pid} fd {fd} ({link}) is a host file opened with O_NOFOLLOW "
                            "(e.g. a Python temporary file as stdio); CRIU cannot re-open it on restore"
                        )
                    fl = raw & (os.O_ACCMODE | os.O_APPEND)
                    inv.ext_files.setdefault(key, f"file:{fl:o}")
                    inv.ext_modes.setdefault(key, stat.S_IMODE(st.st_mode))
                continue
            if link.startswith("socket:["):
                sockets.add(st.st_ino)
                continue  # TCP via tcp_established, unix peers outside via ext_unix_sk
            if link.startswith("anon_inode:"):
                kind = link.split(":", 1)[1].strip("[]")
                if kind in ("io_uring", "perf_event", "bpf-map", "bpf-prog", "fanotify", "pidfd"):
                    inv.problems.append(f"pid {pid} fd {fd} is {link}, which CRIU cannot checkpoint")
    for ino, ends in pipes.items():
        if ends != {"r", "w"}:
            inv.ext_files[f"pipe:[{ino}]"] = pipe_roles[ino]
    inv.tcp = _count_tcp(pid1)
    inv.inet_listen, inv.inet_other = _count_inet(pid1, sockets)
    return inv


def _role(fd: str, mode: str) -> str:
    """What to hand back at restore for an external file: stdin reads, output writes."""
    return "in" if mode == "r" else "out"


def _count_tcp(pid1: int) -> int:
    n = 0
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid1}/net/{name}") as f:
                next(f)
                n += sum(1 for line in f if line.split()[3] == "01")
        except (OSError, StopIteration, IndexError):
            continue
    return n


def _count_inet(pid1: int, inodes: set[int]) -> tuple[int, int]:
    """(listening TCP, other IP sockets) among the socket inodes the tasks hold."""
    listen = other = 0
    if not inodes:
        return 0, 0
    for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
        try:
            with open(f"/proc/{pid1}/net/{name}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 9 and int(cols[9]) in inodes:
                        if name.startswith("tcp") and cols[3] == "0A":
                            listen += 1
                        else:
                            other += 1
        except (OSError, StopIteration, ValueError):
            continue
    return listen, other


def session_problem(pid1: int) -> str | None:
    """CRIU refuses a tree whose session leader is outside its pid namespace."""
    try:
        with open(f"/proc/{pid1}/status") as f:
            for line in f:
                if line.startswith("NSsid:"):
                    sids = line.split()[1:]
                    if sids and sids[-1] == "0":
                        return (
                            "its first process's session leader is outside the instance "
                            "(PID 1 did not call setsid()); CRIU cannot dump such a tree"
                        )
    except OSError:
        pass
    return None
