"""Per-name lock files: removed with their instance, and still exclusive across that removal."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

from stockade.state import StateStore


def test_remove_unlinks_the_lock_and_a_waiter_on_the_old_file_tries_again(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "root", tmp_path / "run")
    inside: list[str] = []
    overlap: list[str] = []
    got = threading.Event()

    def waiter() -> None:
        with store.lock("x"):
            if inside:
                overlap.append(f"waiter entered while {inside} held it")
            inside.append("waiter")
            got.set()
            time.sleep(0.2)
            inside.remove("waiter")

    with store.lock("x"):
        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(0.1)  # the waiter has opened the old file and blocks in flock
        store.dir("x").mkdir(parents=True)
        store.remove("x")
        assert not (store.locks / "x.lock").exists()
    # a newcomer makes a new file; the waiter, woken on the old one, must not share with it
    with store.lock("x"):
        if inside:
            overlap.append(f"newcomer entered while {inside} held it")
        inside.append("newcomer")
        time.sleep(0.2)
        inside.remove("newcomer")
    t.join(5)
    assert got.is_set() and overlap == []


def test_prune_locks_skips_live_names_and_held_locks(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "root", tmp_path / "run")
    store.locks.mkdir(parents=True)
    for n in ("stale", "held", "live", ".image-default"):
        (store.locks / f"{n}.lock").touch()
    store.dir("live").mkdir(parents=True)
    fd = os.open(store.locks / "held.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.prune_locks() == ["stale"]
    finally:
        os.close(fd)
    assert sorted(p.name for p in store.locks.iterdir()) == [".image-default.lock", "held.lock", "live.lock"]
