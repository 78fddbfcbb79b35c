"""Checkpoint/restore and migration of real linux_ns instances with CRIU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest_helpers import (
    postcopy_skip_reason,
    precopy_skip_reason,
    read_counter,
    start_counter,
    wait_counter_past,
)
from stockade import checkpointing, migrate
from stockade.errors import MigrationError

pytestmark = pytest.mark.timeout(120)


def test_preflight_says_why(host: Any, tmp_path: Path) -> None:
    inst = host.create({"name": "nosid", "process": {"args": ["sleep", "100"]}})
    inst.start()
    problems = checkpointing.preflight(inst)
    assert not any("setsid" in p for p in problems), problems  # PID 1 leads its own session
    assert any("O_NOFOLLOW" in p for p in problems), problems  # pytest's capture files
    ok = start_counter(host, "ok", tmp_path)
    wait_counter_past(ok, 1)
    assert checkpointing.preflight(ok) == []


def test_round_trip_keeps_memory(host: Any, tmp_path: Path) -> None:
    inst = start_counter(host, "ctr", tmp_path)
    before = wait_counter_past(inst, 10)
    r = checkpointing.checkpoint(inst, tmp_path / "ck")
    assert inst.refresh().status == "stopped"
    assert r.images_bytes > 0 and (tmp_path / "ck" / "stockade.json").exists()
    inst.delete()
    back = checkpointing.restore(host, tmp_path / "ck")
    assert back.name == "ctr" and back.status == "running"
    after = wait_counter_past(back, before)
    # A restart would count from 1 again; a restore continues from memory.
    assert after > before


def test_restore_under_new_name_leave_running(host: Any, tmp_path: Path) -> None:
    inst = start_counter(host, "orig", tmp_path)
    before = wait_counter_past(inst, 5)
    checkpointing.checkpoint(inst, tmp_path / "ck", leave_running=True)
    assert inst.refresh().status == "running"
    assert wait_counter_past(inst, before) > before  # the original goes on
    copy = checkpointing.restore(host, tmp_path / "ck", name="copy")
    assert copy.name == "copy"
    assert wait_counter_past(copy, before) > before
    assert {i.name for i in host.instances()} == {"orig", "copy"}
    # The copy has its own storage and groups: deleting it leaves the original alone.
    copy.delete(force=True)
    assert inst.refresh().status == "running"


def _wait_started(inst: Any, timeout: float = 30) -> int:
    """The big counter writes /tmp/c only once its memory is filled."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = inst.run(["cat", "/tmp/c"])
        if r.exit_status == 0 and r.stdout.strip():
            return wait_counter_past(inst, int(r.stdout.strip()) + 3)
        time.sleep(0.1)
    raise AssertionError("the counter did not start")


def _need_postcopy() -> None:
    why = postcopy_skip_reason()
    if why:
        pytest.skip(why)


def _need_precopy() -> None:
    why = precopy_skip_reason()
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("method", ["pre-copy", "post-copy", "stop-and-copy"])
def test_live_migration_keeps_memory(host: Any, remote_target: Any, tmp_path: Path, method: str) -> None:
    from stockade import Host

    if method == "pre-copy":
        _need_precopy()
    if method == "post-copy":
        _need_postcopy()
    inst = start_counter(host, "mig", tmp_path, big=method != "stop-and-copy")
    before = _wait_started(inst)
    target = remote_target()
    rep = migrate.migrate(inst, migrate.Channel.of_socket(target.sock), mode="live", method=method)
    assert rep.method == method, rep
    assert rep.downtime_s > 0 and rep.bytes_moved > 0
    if method == "post-copy":
        # the heap moved after the restore, through the page-server relay, not as images
        assert rep.pages_bytes > 16 << 20, rep
        assert rep.images_bytes < 8 << 20, rep
    if method == "pre-copy":
        # the heap moved in pre-dumps while the counter ran; the final dump (frozen) holds
        # only the pages dirtied since the last one (soft-dirty), not the heap again
        assert rep.steps.get("pre_copy_s", 0) > 0, rep
        assert rep.pages_bytes > 16 << 20, rep
        assert rep.images_bytes < 8 << 20, rep
    assert host.instances() == []  # the source is gone
    moved = Host(target.root).get("mig")
    assert moved.status == "running"
    assert wait_counter_past(moved, before) > before


def test_auto_method_follows_the_kernel(host: Any) -> None:
    from stockade_linux_ns.checkpoint import CriuCheckpointer

    cp = CriuCheckpointer()
    caps, why = cp.capabilities(), cp.live_problems()
    method, reason = migrate.choose_method(caps, "auto", why)
    expected = "pre-copy" if caps["precopy"] else "post-copy" if caps["postcopy"] else "stop-and-copy"
    assert method == expected, (method, reason)
    if not caps["precopy"]:
        assert "soft-dirty" in reason
        with pytest.raises(MigrationError, match="soft-dirty"):
            migrate.choose_method(caps, "pre-copy", why)


def test_criu_version_rules() -> None:
    """Debian 12's CRIU 3.17 is accepted where it works (kernels before 6.13's vDSO split, as
    the VM tier's 6.1), and gets what its RPC lacks another way."""
    from stockade_linux_ns.checkpoint import criu

    assert criu.kernel_version("6.1.0-56-amd64") == (6, 1)
    assert criu.min_version((6, 1)) == (3, 17)
    assert criu.min_version((6, 13)) == criu.min_version((6, 18)) == (4, 1)
    opts = {"pid": 7, "leave_running": 1, "leave_stopped": 1, "skip_file_rwx_check": 1}
    # 3.17: no leave_stopped field (3.19) -> the RPC config file, and leave_running (applied
    # after that file) left out; no skip_file_rwx_check (3.18) at all
    assert criu.legacy_options(opts, (3, 17, 1)) == ({"pid": 7}, ["leave-stopped"])
    running = {"pid": 7, "leave_running": 1}
    assert criu.legacy_options(running, (3, 17)) == (running, [])
    assert criu.legacy_options(opts, (4, 1, 1)) == (opts, [])


def test_dump_retries_a_task_caught_in_d_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """criu's "Unseizable non-zombie ... state D" (a task caught mid-exit) fails a dump that a
    second try a moment later passes: the dump tries again, without the first try's files."""
    from stockade_linux_ns.checkpoint import driver

    images = tmp_path / "images"
    images.mkdir()
    (images / driver.MANIFEST).write_text("{}")
    tries: list[list[str]] = []

    def fake_call(req_type: int, opts: dict[str, Any], pass_fds: list[int], **kw: Any) -> dict[str, Any]:
        tries.append(sorted(p.name for p in images.iterdir()))
        if len(tries) == 1:
            (images / "pages-1.img").write_bytes(b"x")
            (images / driver.LOG_DUMP).write_text(
                "Error (compel/src/lib/infect.c:234): Unseizable non-zombie 3582 found, state D, err -1/4\n"
            )
            return {"success": 0}
        return {"success": 1}

    monkeypatch.setattr(driver, "_call", fake_call)
    resp, _ = driver._dump_retrying(1, {}, [], images, driver.LOG_DUMP)
    assert resp["success"] and len(tries) == 2
    assert tries[1] == sorted([driver.MANIFEST, "dump-try1.log"]), tries
    # any other failure is final at once
    tries.clear()
    (images / driver.LOG_DUMP).write_text("Error (criu/cr-dump.c:1): something else\n")
    monkeypatch.setattr(driver, "_call", lambda *a, **k: tries.append([]) or {"success": 0})
    resp, _ = driver._dump_retrying(1, {}, [], images, driver.LOG_DUMP)
    assert not resp["success"] and len(tries) == 1


def test_peer_error_after_a_broken_pipe() -> None:
    """The target gives up (an abort frame) and hangs up while the source still streams: the
    source can tell the target's reason, not only the broken pipe."""
    import io
    import socket

    a, b = socket.socketpair()
    src, dst = migrate.Channel.of_socket(a), migrate.Channel.of_socket(b)
    dst.abort("injected fault at target:images")
    dst.close()
    with pytest.raises(OSError):
        src.send_stream(io.BytesIO(b"x" * (8 << 20)))
    assert src.peer_error(timeout=5) == "injected fault at target:images"
    src.close()
    # a peer that hung up without a word: nothing to tell
    a, b = socket.socketpair()
    src = migrate.Channel.of_socket(a)
    b.close()
    assert src.peer_error(timeout=5) is None
    src.close()


FAULTS = [
    ("target:images", "auto"),
    ("target:storage", "auto"),
    ("target:restore", "auto"),
    ("source:storage", "auto"),
    ("target:restore", "stop-and-copy"),
    # post-copy, after the target resumed the copy, while its pages are still being served
    ("source:pages", "post-copy"),
    ("target:pages", "post-copy"),
]


@pytest.mark.parametrize(("fault", "method"), FAULTS)
def test_failed_migration_leaves_source_running_target_clean(  # noqa: PLR0917 (fixtures)
    host: Any, remote_target: Any, fault: str, method: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from _helpers import leftovers  # type: ignore[import-not-found]
    from stockade import Host

    if method == "post-copy":
        _need_postcopy()
    inst = start_counter(host, "keep", tmp_path, big=method == "post-copy")
    before = _wait_started(inst)
    side = fault.split(":", maxsplit=1)[0]
    if side == "source":
        monkeypatch.setenv("STOCKADE_MIGRATE_FAULT", fault)
        target = remote_target()
    else:
        target = remote_target({"STOCKADE_MIGRATE_FAULT": fault})
    with pytest.raises(MigrationError, match=f"injected fault at {fault}"):
        migrate.migrate(inst, migrate.Channel.of_socket(target.sock), mode="live", method=method)
    assert inst.refresh().status == "running"
    assert wait_counter_past(inst, before) > before
    target.sock.close()
    err = target.close()
    assert target.proc.returncode != 0, err
    h2 = Host(target.root)
    assert h2.instances() == [], err
    assert leftovers(target.root, h2.tag) == []
    migrate_tmp = target.root / "run" / "migrate"
    assert not migrate_tmp.exists() or not list(migrate_tmp.iterdir())
    # continues from its own memory (a restart would count from 1 again)
    assert read_counter(inst) >= before
