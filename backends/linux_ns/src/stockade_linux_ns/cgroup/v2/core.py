"""v2 core files, usable in any non-root cgroup: subtree_control, procs, events, kill.

Delegation ("no internal processes"): to use a controller in the instance's leaf it
must be enabled in ``cgroup.subtree_control`` of every cgroup from our own down to
the leaf's parent. A non-root cgroup that holds processes cannot enable controllers.
When ours does, its processes are moved into ``<own>/stockade-leaf`` (what docker-in-docker
and systemd's delegated scopes do), which stays beneath our own cgroup; with
``move_to_leaf=False`` the caller gets an error saying how to run stockade instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable, Sequence

from stockade.errors import QuotaError

from .. import fs
from ..detect import V2_LEAF


def controllers(path: str) -> frozenset[str]:
    try:
        return frozenset(fs.read(os.path.join(path, "cgroup.controllers")).split())
    except FileNotFoundError:
        return frozenset()


def enabled(path: str) -> frozenset[str]:
    try:
        return frozenset(fs.read(os.path.join(path, "cgroup.subtree_control")).split())
    except FileNotFoundError:
        return frozenset()


def _enable(path: str, names: Iterable[str]) -> None:
    fs.write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{n}" for n in sorted(names)))


def move_to_leaf(own: str, attempts: int = 20) -> None:
    """Move every process of ``own`` into ``own``/stockade-leaf (forks racing us are retried)."""
    leaf = os.path.join(own, V2_LEAF)
    fs.mkdir(leaf)
    for _ in range(attempts):
        pids = fs.procs(own)
        if not pids:
            return
        for pid in pids:
            try:
                fs.write(os.path.join(leaf, "cgroup.procs"), pid)
            except OSError as e:
                if e.errno != errno.ESRCH:  # exited meanwhile
                    raise
    raise OSError(errno.EBUSY, f"{own}: processes keep appearing while moving them to {leaf}", own)


def delegate(chain: Sequence[str], wanted: Iterable[str], required: Iterable[str], move_ok: bool) -> None:
    """Enable ``wanted`` controllers (those available) in subtree_control down ``chain``.

    ``chain`` runs from our own cgroup to the leaf's parent. Only ``required`` ones must
    succeed; the rest are enabled when possible so a later update can use them.
    """
    want = frozenset(wanted)
    need = frozenset(required)
    for i, path in enumerate(chain):
        todo = (want & controllers(path)) - enabled(path)
        if not todo:
            continue
        try:
            _enable(path, todo)
        except OSError as e:
            if e.errno != errno.EBUSY or i != 0:
                raise
            missing = need - enabled(path)
            if move_ok:
                move_to_leaf(path)
                _enable(path, todo)
            elif missing:
                raise QuotaError(
                    f"cgroup v2: cannot enable {', '.join(sorted(missing))} in "
                    f"{path}/cgroup.subtree_control: that cgroup holds processes (v2's "
                    "'no internal processes' rule); run stockade in a cgroup of its own, e.g. "
                    "`systemd-run --scope -p Delegate=yes stockade ...`, or set option "
                    "cgroup_v2_move_to_leaf"
                ) from e
            else:
                want = want & enabled(path)  # go on with what our own cgroup already passes down


def events(path: str) -> dict[str, int]:
    return fs.read_keyed(os.path.join(path, "cgroup.events"))


def populated(path: str) -> bool:
    return events(path).get("populated", 0) == 1


def kill(path: str) -> None:
    """SIGKILL every process in ``path`` and below: cgroup.kill (5.14+) or a kill loop."""
    if fs.exists(os.path.join(path, "cgroup.kill")):
        fs.write(os.path.join(path, "cgroup.kill"), 1)
        return
    for sub in fs.walk_down(path):
        for pid in fs.procs(sub):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def wait_empty(path: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while fs.exists(path) and populated(path):
        if time.monotonic() > deadline:
            return False
        kill(path)
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True
