"""The instance lifecycle through the Python API, on the real kernel and default backends."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from stockade import Host, NotFound, StateConflict

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_create_start_wait_delete(host: Host) -> None:
    inst = host.create({"name": "life", "process": {"args": ["sh", "-c", "exit 7"]}})
    assert inst.status == "created" and inst.pid
    assert host.get("life").status == "created"
    inst.start()
    assert inst.wait() == 7
    assert host.get("life").status == "stopped" and host.get("life").exit_status == 7
    inst.delete()
    with pytest.raises(NotFound):
        host.get("life")


def test_isolation_visible_from_inside(host: Host) -> None:
    inst = host.create({"name": "iso", "hostname": "web1", "process": {"args": ["sleep", "30"]}})
    inst.start()
    try:
        assert inst.run(["hostname"]).stdout.strip() == b"web1"
        ps = inst.run(["ps", "-o", "pid,comm"]).stdout.decode()
        pids = [line.split()[0] for line in ps.splitlines()[1:]]
        assert "1" in pids and len(pids) <= 3, ps  # sleep (1), ps itself, nothing of the host
        status = inst.run(["cat", "/proc/self/status"]).stdout.decode()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["Seccomp"].strip() == "2" and fields["NoNewPrivs"].strip() == "1"
        capeff = int(fields["CapEff"], 16)
        for cap in (21, 16, 17, 25, 12, 13, 27, 9, 19):  # SYS_ADMIN MODULE RAWIO TIME NET_ADMIN ...
            assert not capeff & (1 << cap), f"capability {cap} present: {fields['CapEff']}"
        mounts = inst.run(["cat", "/proc/self/mounts"]).stdout.decode()
        assert str(host.root) not in mounts  # no host paths in its mount table
        cg = inst.run(["cat", "/proc/self/cgroup"]).stdout.decode()
        assert all(line.endswith(":/") for line in cg.split()), cg  # its own cgroup namespace
    finally:
        inst.delete(force=True)


def _cgroup_lines(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return {line.split(":", 2)[1]: line.split(":", 2)[2].strip() for line in f}


@pytest.mark.parametrize("how", ["born", "moved"])
def test_every_process_is_in_every_group(host: Host, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """PID 1 and an exec'd process are in each of the instance's cgroups, v1 and v2 alike,
    whether cloned straight into the v2 group (clone3) or forked and moved in."""
    if how == "moved":
        from stockade_linux_ns import syscalls

        monkeypatch.setattr(syscalls, "single_threaded", lambda: False)  # takes the fork path
    inst = host.create({"name": f"cg-{how}", "process": {"args": ["sleep", "30"]}})
    inst.start()
    ex = None
    try:
        groups = inst.context().data["quota"]["groups"]
        assert groups
        ex = inst.spawn(["sleep", "30"])
        for pid in (inst.pid, ex.pid):
            assert pid is not None
            lines = _cgroup_lines(pid)
            for g in groups:
                key = "" if g["version"] == 2 else ",".join(sorted(g["controllers"]))
                have = next((v for k, v in lines.items() if ",".join(sorted(k.split(","))) == key), None)
                assert have is not None and g["path"].endswith(have), (pid, g, lines)
    finally:
        if ex is not None:
            os.kill(ex.pid, signal.SIGKILL)
            os.waitpid(ex.pid, 0)  # ours to reap: a zombie would keep the groups busy
        inst.delete(force=True)


def test_stop_escalates_to_sigkill(host: Host) -> None:
    # PID 1 ignores SIGTERM without a handler: stop must fall back to SIGKILL
    inst = host.create({"name": "stubborn", "process": {"args": ["sleep", "60"]}, "stop_timeout": 0.3})
    inst.start()
    t = time.monotonic()
    status = inst.stop()
    assert time.monotonic() - t < 5
    assert status == 128 + signal.SIGKILL
    inst.delete()


def test_kill_and_state_conflicts(host: Host) -> None:
    inst = host.create(
        {"name": "k", "process": {"args": ["sh", "-c", "trap 'exit 9' TERM; sleep 60 & wait"]}}
    )
    with pytest.raises(StateConflict):
        inst.pause()
    inst.start()
    with pytest.raises(StateConflict, match="stop it first"):
        inst.delete()
    with pytest.raises(StateConflict, match="already running"):
        inst.start()
    time.sleep(0.2)
    inst.kill(signal.SIGTERM)
    assert inst.wait(timeout=10) == 9
    inst.delete()


def test_pause_resume(host: Host) -> None:
    inst = host.create({"name": "p", "process": {"args": ["sleep", "60"]}})
    inst.start()
    inst.pause()
    assert host.get("p").status == "paused"
    inst.resume()
    assert host.get("p").status == "running"
    inst.delete(force=True)


def test_restart_after_stop_keeps_the_root(host: Host) -> None:
    inst = host.create(
        {"name": "again", "process": {"args": ["sh", "-c", "echo x >> /count; wc -l < /count"]}}
    )
    inst.start()
    assert inst.wait() == 0
    inst.start()
    assert inst.wait() == 0
    inst.start()
    inst.wait()
    # the root file system persisted across the three runs: three lines
    out = Path(inst.state.rootfs["path"]) / "count"  # type: ignore[index]
    assert out.read_text().count("x") == 3
    inst.delete()


def test_run_convenience(host: Host) -> None:
    assert host.run({"name": "once", "process": {"args": ["true"]}}) == 0
    assert [i.name for i in host.instances()] == []


def _ns(pid: int | str, name: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{name}").st_ino


def test_warm_host_spare_namespaces_are_fresh_and_ours_unchanged(root_dir: Path) -> None:
    """A warm host (the supervisor) gives each instance net, ipc and uts namespaces made
    while the one before it set itself up (nspool): each instance still gets its own, new
    and unused, and the host process stays in its own namespaces throughout."""
    ours = {n: _ns("self", n) for n in ("net", "ipc", "uts")}
    with Host(root_dir, warm=True) as host:
        insts = []
        try:
            for i in range(3):
                inst = host.create(
                    {"name": f"warm{i}", "hostname": f"warm{i}", "process": {"args": ["sleep", "30"]}},
                    start=True,
                )
                insts.append(inst)
                assert {n: _ns("self", n) for n in ours} == ours
            seen = [{n: _ns(i.pid or 0, n) for n in ours} for i in insts]
            for n, own in ours.items():
                inodes = [s[n] for s in seen]
                assert len(set(inodes)) == len(inodes) and own not in inodes, (n, inodes)
            for i, inst in enumerate(insts):
                assert inst.run(["hostname"]).stdout.strip() == f"warm{i}".encode()
                links = inst.run(["cat", "/proc/net/dev"]).stdout.decode()
                assert [ln.split(":")[0].strip() for ln in links.splitlines()[2:]] == ["lo"], links
        finally:
            for inst in insts:
                inst.delete(force=True)
        assert {n: _ns("self", n) for n in ours} == ours


def test_warm_host_keeps_cgroup_parents_until_closed(root_dir: Path) -> None:
    """Re-making stockade/<tag> in every hierarchy costs ~1 ms a run: a warm host keeps
    them between instances and removes them (empty) on close; a cold one at each delete."""
    from stockade_linux_ns.cgroup.detect import detect
    from stockade_linux_ns.cgroup.placement import tag_dir, used

    dirs = [tag_dir(h, Host(root_dir).tag) for h in detect("auto").hierarchies if used(h)]
    assert dirs
    with Host(root_dir, warm=True) as host:
        assert host.run({"name": "keep", "process": {"args": ["true"]}}) == 0
        assert all(os.path.isdir(d) for d in dirs)
    assert not any(os.path.exists(d) for d in dirs)
    assert Host(root_dir).run({"name": "cold", "process": {"args": ["true"]}}) == 0
    assert not any(os.path.exists(d) for d in dirs)
