"""create / start / exec / stop / delete through the Host API, and nothing left afterwards."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from ..errors import StockadeError
from ..features import Feature
from .harness import host_resources, pids_with, proc_root_under, running, sh, tree_listing, wait_for
from .marks import conformance_column, requires
from .outcomes import cannot_run, not_supported
from .plugin import note
from .subject import MARKER_PATH, SUITE_DIR, Subject, destroy_root

COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.05; done"


def _count(inst: object) -> int:
    """The counter; the shell truncates the file before each write, so a read can find it
    empty for a moment (read again then, for up to 2 s)."""
    deadline = time.monotonic() + 2
    while True:
        out = inst.run(["/bin/cat", "/root/count"]).stdout.decode().strip()  # type: ignore[attr-defined]
        if out or time.monotonic() > deadline:
            return int(out or 0)
        time.sleep(0.01)


class LifecycleSuite:
    """Subclass with a ``stockade_backends`` fixture: the lifecycle, checkpoint and migration."""

    @conformance_column("lifecycle")
    def test_run_exit_status_and_output(self, stockade_subject: Subject) -> None:
        out = sh(stockade_subject, f"cat {MARKER_PATH}; echo to-stderr >&2; exit 7")
        assert out.status == 7
        assert stockade_subject.marker in out.stdout
        assert "to-stderr" in out.stderr

    @conformance_column("lifecycle")
    def test_exec_in_a_running_instance(self, stockade_subject: Subject) -> None:
        with running(stockade_subject, prefix="exec") as inst:
            r = inst.run(["/bin/sh", "-c", f"cat {MARKER_PATH}; exit 3"])
            assert r.exit_status == 3
            assert stockade_subject.marker in r.stdout.decode()

    @conformance_column("lifecycle")
    def test_stop_ends_every_process(self, stockade_subject: Subject) -> None:
        token = f"stockade-stop-{secrets.token_hex(4)}"
        script = "sleep 1000 & sleep 1000 & trap '' TERM; wait"
        with running(stockade_subject, ["/bin/sh", "-c", script, token], prefix="stop") as inst:
            assert wait_for(lambda: bool(pids_with(token))), "the instance's shell did not start"
            inst.stop(timeout=1)
            assert inst.refresh().status == "stopped"
        assert wait_for(lambda: not pids_with(token), 5), f"processes outlived delete: {pids_with(token)}"

    @conformance_column("lifecycle")
    @pytest.mark.parametrize("network", ["loopback", "bridge"])
    def test_delete_leaves_nothing(
        self, stockade_subject: Subject, network: str, request: pytest.FixtureRequest
    ) -> None:
        """After delete nothing of the instance is left: mounts, loop devices backed by a file
        in the root, cgroups, links, net namespaces, processes, and files in the host root."""
        subject = stockade_subject
        host = subject.host
        extra: dict[str, Any] = {"network": {"mode": network}}
        if network == "loopback" and Feature.NETWORK_ISOLATION not in subject.isolation.features:
            extra = {}  # the spec's default: the only network such a backend gives
        if network == "bridge":
            if Feature.NETWORK_ISOLATION not in subject.isolation.features:
                not_supported(f"isolation {subject.isolation.name!r} has no network isolation")
            problems = subject.isolation.check(host.make_spec(subject.spec("check", ["/bin/true"], **extra)))
            if problems:
                not_supported("; ".join(problems))
        # The first instance of a root may make host-wide state that stays by design (storage
        # directories, a bridged network, a disk-quota file system): a warm-up instance makes
        # it, and what it keeps must not be its own (its id or name in a path).
        skip = (SUITE_DIR,)
        files0 = tree_listing(subject.root, skip)
        try:
            with running(subject, prefix="warm", **extra) as warm:
                warm_keys = (warm.id, warm.name)
        except StockadeError as e:
            if network == "bridge":
                cannot_run(f"a bridged instance cannot be made here: {e}")
            raise
        before = host_resources(subject.root, host.tag)
        files1 = tree_listing(subject.root, skip)
        kept = sorted(files1 - files0)
        own = [p for p in kept if any(k in p for k in warm_keys)]
        assert not own, f"delete left files of the instance in the host root: {_summary(own)}"
        if kept:
            note(request, f"host-wide state the first instance made, kept by design: {_summary(kept)}")
        with running(
            subject,
            prefix="del",
            resources={"memory": "64M"} if Feature.MEMORY_LIMIT in subject.quota.features else {},
            **extra,
        ) as inst:
            r = inst.run(["/bin/true"])
            assert r.exit_status == 0
            ident, pid = inst.id, inst.pid
            rootfs = inst.context().rootfs
            during = host_resources(subject.root, host.tag, ident)
            state_dir = host.store.dir(inst.name)
        after = host_resources(subject.root, host.tag, ident)
        left = sorted(after - before)
        assert not left, f"delete left behind: {left} (while running: {sorted(during - before)})"
        stray = sorted(tree_listing(subject.root, skip) - files1)
        assert not stray, f"delete left files in the host root {subject.root}: {_summary(stray)}"
        assert pid is None or not os.path.exists(f"/proc/{pid}") or _zombie_or_other(pid), (
            f"pid {pid} survived"
        )
        if rootfs is not None:
            assert not proc_root_under(rootfs.path), "processes still have their root in the instance"
            with open("/proc/self/mountinfo") as f:
                mounted = any(f" {rootfs.path} " in line for line in f)
            assert not mounted, f"{rootfs.path} is still mounted"
        assert not state_dir.exists(), f"{state_dir} survived delete"

    @requires(Feature.CHECKPOINT)
    def test_checkpoint_restore_keeps_process_state(self, stockade_subject: Subject) -> None:
        from .. import checkpointing
        from ..errors import NotSupported, Unavailable

        with running(stockade_subject, ["/bin/sh", "-c", COUNTER], prefix="ckpt") as inst:
            assert wait_for(lambda: _count(inst) > 20), "the counter did not run"
            try:
                problems = checkpointing.preflight(inst)
            except (NotSupported, Unavailable) as e:
                cannot_run(str(e))
            if problems:
                cannot_run("; ".join(problems))
            with tempfile.TemporaryDirectory(prefix="stockade-test-ckpt-") as d:
                at = _count(inst)
                checkpointing.checkpoint(inst, Path(d) / "c")
                restored = checkpointing.restore(stockade_subject.host, Path(d) / "c", name=inst.name + "-r")
                try:
                    time.sleep(0.3)
                    now = _count(restored)
                finally:
                    restored.delete(force=True)
        assert now >= at > 0, f"the restored counter started over ({at} -> {now})"

    @requires(Feature.LIVE_MIGRATION)
    def test_live_migration_keeps_process_state(self, stockade_subject: Subject) -> None:
        """Move a running counter to another host root (another process, as a real target)."""
        from .. import migrate
        from ..errors import NotSupported, Unavailable
        from .subject import BackendChoice, build_subject

        names = stockade_subject.backends
        # The backends' options too (zfs: the parent dataset; each root has its own under it).
        options = {k: dict(v) for k, v in stockade_subject.host.options.items()}
        other = build_subject(
            BackendChoice(
                names["isolation"],
                names["quota"],
                names["storage"],
                plugins=stockade_subject.host.plugins,
                options=options,
            ),
            str(stockade_subject.root.parent),
        )
        sock_path = str(other.root / "migrate.sock")
        opts_json = json.dumps(options, default=str)
        target = subprocess.Popen(
            [sys.executable, "-c", _TARGET, str(other.root), sock_path, opts_json, *names.values()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert target.stdout is not None and target.stdin is not None
            assert target.stdout.readline().strip() == "ready", "the migration target did not start"
            with running(stockade_subject, ["/bin/sh", "-c", COUNTER], prefix="mig") as inst:
                assert wait_for(lambda: _count(inst) > 20), "the counter did not run"
                before = _count(inst)
                conn = socket.socket(socket.AF_UNIX)
                conn.connect(sock_path)
                try:
                    migrate.migrate(inst, migrate.Channel.of_socket(conn), mode="live")
                except (NotSupported, Unavailable) as e:
                    cannot_run(str(e))
                line = target.stdout.readline().split()
                assert line[:1] == ["moved"], f"the target failed: {line}"
                moved = other.host.get(line[1])
                time.sleep(0.3)
                after = _count(moved)
            assert after >= before, f"the migrated counter started over ({before} -> {after})"
        finally:
            if target.stdin:
                target.stdin.close()
            try:
                target.wait(30)
            except subprocess.TimeoutExpired:
                target.kill()
                target.wait()
            destroy_root(other.host, other.root)


_TARGET = """
import json, socket, sys
from stockade import Host, migrate
root, path, options, iso, quota, storage = sys.argv[1:7]
host = Host(root, isolation=iso, quota=quota, storage=storage, options=json.loads(options))
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
try:
    inst = migrate.serve(host, migrate.Channel.of_socket(conn))
    print("moved", inst.name, flush=True)
except Exception as e:
    print("failed", e, flush=True)
sys.stdin.read()
"""


def _summary(paths: list[str], most: int = 12) -> str:
    """Paths, a directory standing for what is below it."""
    tops = [p for p in paths if not any(p != q and p.startswith(q) and q.endswith("/") for q in paths)]
    more = f" (+{len(tops) - most} more)" if len(tops) > most else ""
    return ", ".join(tops[:most]) + more


def _zombie_or_other(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
