"""The linux_ns isolation backend against the real kernel: what an instance sees and may do."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from linux_ns_helpers import HOST_USR, Instances, assert_no_children, read_all
from stockade.errors import IsolationError, StateConflict
from stockade.features import Feature, Restriction
from stockade.interfaces import IsolationBackend, Stdio
from stockade.spec import Process
from stockade_linux_ns.caps import CAPS, DEFAULT_CAPS, mask_of
from stockade_linux_ns.isolation import LinuxNsIsolation
from stockade_linux_ns.rootfs import secure_join

PROBE = str(Path(__file__).with_name("probe_inside.py"))
FORBIDDEN_CAPS = (
    "SYS_ADMIN",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_TIME",
    "NET_ADMIN",
    "NET_RAW",
    "MKNOD",
    "LINUX_IMMUTABLE",
    "SYS_PTRACE",
    "SYSLOG",
    "SYS_BOOT",
)


def probe(instances: Instances, **spec: Any) -> dict[str, Any]:
    mounts = [*HOST_USR, {"target": "/probe.py", "source": PROBE, "readonly": True}]
    mounts += spec.pop("mounts", [])
    code, out = instances.run(
        process={"args": ["/usr/bin/python3", "-I", "-S", "/probe.py"]}, mounts=mounts, **spec
    )
    assert code == 0, out
    result: dict[str, Any] = json.loads(out)
    return result


def test_declarations(backend: LinuxNsIsolation) -> None:
    assert isinstance(backend, IsolationBackend)
    assert backend.probe().ok
    assert backend.features == {
        Feature.FS_ISOLATION,
        Feature.NETWORK_ISOLATION,
        Feature.USER_NAMESPACE,
        Feature.TERMINAL,
        Feature.CHECKPOINT,
        Feature.LIVE_MIGRATION,
        Feature.COLD_MIGRATION,
    }
    assert backend.semantics.migration == "live"
    assert backend.restrictions == set(Restriction)
    assert backend.relaxable == set(Restriction)
    assert not DEFAULT_CAPS & set(FORBIDDEN_CAPS)


def test_default_instance_is_isolated_and_restricted(instances: Instances) -> None:
    r = probe(instances, hostname="inside")
    assert r["hostname"] == "inside"
    assert r["pid"] == 1
    assert r["pids"] == [1]  # no host process is visible
    assert r["fds"] == [0, 1, 2, 3]  # 3 is listdir's own
    st = r["status"]
    default = mask_of(DEFAULT_CAPS)
    for field in ("CapBnd", "CapEff", "CapPrm", "CapInh"):
        assert int(st[field], 16) == default, field
    assert int(st["CapAmb"], 16) == 0
    assert st["Seccomp"] == "2"
    assert st["NoNewPrivs"] == "1"
    mountpoints = [line.split()[4] for line in r["mountinfo"].splitlines()]
    assert mountpoints[0] == "/"
    assert "/sys/fs/cgroup" not in mountpoints and "/proc/sys" in mountpoints
    for what in (
        "mount",
        "mknod",
        "raw_socket",
        "packet_socket",
        "init_module",
        "finit_module",
        "keyctl",
        "unshare_user",
        "ptrace",
        "personality_bad",
    ):
        assert r[what] == "EPERM", what
    assert r["personality_query"] == "ok"
    assert r["sysctl_write"] == "EROFS"
    assert r["sys_write"] == "EROFS"
    assert r["masked"]["/proc/keys"] == "" and r["masked"]["/proc/timer_list"] == ""
    assert r["masked"].get("/proc/acpi", []) == [] and r["masked"]["/sys/firmware"] == []
    assert int(r["lo_flags"], 16) & 1  # loopback is up by default


def test_relaxations_relax(instances: Instances) -> None:
    r = probe(instances, allow=["raw_sockets", "mknod", "mount", "keyring", "sysctl"])
    st = r["status"]
    for cap in ("NET_RAW", "MKNOD", "SYS_ADMIN"):
        assert int(st["CapEff"], 16) & (1 << CAPS[cap]), cap
    assert not int(st["CapEff"], 16) & (1 << CAPS["SYS_MODULE"])
    assert r["raw_socket"] == "ok" and r["packet_socket"] == "ok"
    assert r["mknod"] == "ok"
    assert r["mount"] == "ok"
    assert r["sysctl_write"] == "ok"  # the instance's own uts namespace domainname
    assert r["keyctl"] == "ok"
    # ... and the session keyring is the instance's own, not ours
    libc = ctypes.CDLL(None, use_errno=True)
    ours = libc.syscall(ctypes.c_long(250), 0, ctypes.c_int(-3), 0)
    assert r["session_keyring"] != ours
    assert r["init_module"] == "EPERM"  # kmod was not relaxed


def test_network_modes(instances: Instances) -> None:
    code, out = instances.run(network={"mode": "none"}, process={"args": ["cat", "/sys/class/net/lo/flags"]})
    assert code == 0 and not int(out.strip(), 16) & 1
    code, out = instances.run(process={"args": ["ls", "/sys/class/net"]})
    assert code == 0 and out.split() == ["lo"]


def test_exit_status_and_env(instances: Instances) -> None:
    code, out = instances.run(
        process={
            "args": ["sh", "-c", "echo $FOO $(pwd) $(umask); exit 3"],
            "env": {"FOO": "bar"},
            "cwd": "/tmp",
            "umask": 0o027,
        }
    )
    assert code == 3
    assert out.split() == ["bar", "/tmp", "0027"]


def test_user_and_groups(instances: Instances) -> None:
    code, out = instances.run(
        process={
            "args": ["sh", "-c", "id; grep CapEff /proc/self/status"],
            "uid": 65534,
            "gid": 65534,
            "additional_gids": [5],
        }
    )
    assert code == 0, out
    assert "uid=65534" in out and "gid=65534" in out and "5(tty)" in out
    assert out.split()[-1] == "0000000000000000"  # a non-root user execs with no capabilities


def test_start_barrier_and_kill(instances: Instances) -> None:
    ctx = instances.ctx(process={"args": ["sh", "-c", "echo started; exec sleep 1000"]})
    r, w = os.pipe()
    try:
        pid = instances.create(ctx, Stdio(stdout=w))
    finally:
        os.close(w)
    assert instances.backend.is_alive(ctx)
    assert not select.select([r], [], [], 0.2)[0], "the command ran before start()"
    assert not (ctx.run_dir / "start.fifo").exists() or True
    instances.backend.start(ctx)
    assert os.read(r, 100) == b"started\n"
    os.close(r)
    with pytest.raises(StateConflict):
        instances.backend.start(ctx)
    instances.backend.kill(ctx, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not instances.backend.is_alive(ctx)
    with pytest.raises(StateConflict):
        instances.backend.kill(ctx, signal.SIGTERM)
    instances.backend.destroy(ctx)
    assert not ctx.run_dir.exists()


def test_exec_runs_inside_with_exit_code(instances: Instances) -> None:
    ctx = instances.ctx(hostname="execbox", process={"args": ["sleep", "1000"]})
    pid1 = instances.create(ctx)
    instances.backend.start(ctx)
    r, w = os.pipe()
    try:
        sp = instances.backend.exec(
            ctx,
            Process(
                args=(
                    "sh",
                    "-c",
                    "echo $$ $(hostname) $(ls /proc | grep -c '^[0-9]'); "
                    "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; "
                    "ls /proc/self/fd; exit 7",
                )
            ),
            Stdio(stdout=w),
            lambda pid: None,
        )
    finally:
        os.close(w)
    out = read_all(r, 10).split()
    _, status = os.waitpid(sp.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7
    assert out[1] == "execbox" and out[0] != "1"
    assert int(out[2]) <= 6  # sleep, sh, its subshell, ls, grep: nothing of the host's
    assert out[3:7] == ["NoNewPrivs:", "1", "Seccomp:", "2"]
    assert out[7:] == ["0", "1", "2", "3"]
    with pytest.raises(IsolationError, match="executable file not found"):
        instances.backend.exec(ctx, Process(args=("nope",)), Stdio(), lambda pid: None)
    instances.backend.destroy(ctx)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid1, os.WNOHANG)


def _read_until(fd: int, needle: bytes, timeout: float = 10.0) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"{needle!r} not seen; got {buf!r}")
        buf += os.read(fd, 4096)
    return buf


def test_terminal(instances: Instances) -> None:
    ctx = instances.ctx(process={"args": ["sh"]})
    sp = instances.backend.create(ctx, Stdio(terminal=True), lambda pid: None)
    assert sp.pty_master is not None
    instances.backend.start(ctx)
    m = sp.pty_master
    try:
        os.write(m, b"echo hello-$((1+2)); tty\n")
        out = _read_until(m, b"/dev/pts/0")
        assert b"hello-3" in out
        ex = instances.backend.exec(ctx, Process(args=("sh",)), Stdio(terminal=True), lambda pid: None)
        assert ex.pty_master is not None
        try:
            os.write(ex.pty_master, b"tty; exit 4\n")
            assert b"/dev/pts/1" in _read_until(ex.pty_master, b"/dev/pts/1")
            _, status = os.waitpid(ex.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 4
        finally:
            os.close(ex.pty_master)
        os.write(m, b"exit 5\n")
        _, status = os.waitpid(sp.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 5
    finally:
        os.close(m)


def test_mounts_readonly_and_tmpfs(instances: Instances, base_dir: Path, tmp_path: Path) -> None:
    share = base_dir / "share"
    share.mkdir(exist_ok=True)
    (share / "hello").write_text("hi\n")
    code, out = instances.run(
        readonly_rootfs=True,
        mounts=[
            {"target": "/data", "source": str(share), "readonly": True},
            {"target": "/scratch", "type": "tmpfs", "options": ["size=1m"]},
        ],
        process={
            "args": [
                "sh",
                "-c",
                "cat /data/hello; touch /data/x 2>&1; touch /x 2>&1; "
                "touch /scratch/ok && echo tmpfs-ok; cat /etc/hostname",
            ]
        },
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "hi"
    assert "Read-only file system" in lines[1] and "Read-only file system" in lines[2]
    assert lines[3] == "tmpfs-ok"
    assert lines[4] == instances.made[-1].spec.effective_hostname


def test_symlinked_mount_target_stays_inside(instances: Instances, image: Path, base_dir: Path) -> None:
    outside = base_dir / "outside"
    outside.mkdir(exist_ok=True)
    link = image / "escape"
    if not link.is_symlink():
        os.symlink(str(outside), link)  # absolute: must resolve inside the root
    assert secure_join(str(image), "/escape/sub") == str(image) + str(outside) + "/sub"
    code, out = instances.run(mounts=[{"target": "/escape/sub", "type": "tmpfs"}], process={"args": ["true"]})
    assert code == 0, out
    assert not (outside / "sub").exists()
    assert os.path.isdir(str(image) + str(outside) + "/sub")


@pytest.mark.parametrize("kind", ["bad_mount", "missing_command", "bad_cwd"])
def test_setup_failure_leaves_nothing(instances: Instances, kind: str) -> None:
    spec: dict[str, Any] = {
        "bad_mount": {"mounts": [{"target": "/data", "source": "/nonexistent/stockade"}]},
        "missing_command": {"process": {"args": ["no-such-command"]}},
        "bad_cwd": {"readonly_rootfs": True, "process": {"args": ["true"], "cwd": "/no/where"}},
    }[kind]
    ctx = instances.ctx(**spec)
    with pytest.raises(IsolationError) as info:
        instances.create(ctx)
    msg = str(info.value)
    assert "\n" not in msg
    assert {
        "bad_mount": "/nonexistent/stockade",
        "missing_command": 'exec: "no-such-command": executable file not found in $PATH',
        "bad_cwd": "/no/where",
    }[kind] in msg
    assert_no_children()
    assert not ctx.run_dir.exists()
    assert str(ctx.rootfs.path) not in Path("/proc/self/mountinfo").read_text()  # type: ignore[union-attr]


def test_destroy_leaves_nothing_and_is_idempotent(instances: Instances) -> None:
    ctx = instances.ctx(process={"args": ["sleep", "1000"]})
    pid = instances.create(ctx)
    instances.backend.start(ctx)
    exec_pid = instances.backend.exec(ctx, Process(args=("sleep", "1000")), Stdio(), lambda pid: None).pid
    instances.backend.destroy(ctx)
    instances.backend.destroy(ctx)
    assert not os.path.exists(f"/proc/{pid}") and not os.path.exists(f"/proc/{exec_pid}")
    assert_no_children()  # the exec'd process died with the pid namespace and was reaped
    assert not ctx.run_dir.exists()
    assert instances.image.as_posix() not in Path("/proc/self/mountinfo").read_text()


def test_user_namespace(instances: Instances) -> None:
    code, out = instances.run(
        user_namespace=True,
        process={
            "args": [
                "sh",
                "-c",
                "cat /proc/self/uid_map /proc/self/gid_map; id -u; "
                "ls /dev; echo x > /dev/null && echo devnull-ok",
            ]
        },
    )
    assert code == 0, out
    assert out.split()[:6] == ["0", "100000", "65536", "0", "100000", "65536"]
    assert "devnull-ok" in out


def test_host_relaxations(instances: Instances) -> None:
    code, out = instances.run(
        allow=["host_processes"],
        network={"mode": "host"},
        process={"args": ["sh", "-c", "echo $$; ls /sys/class/net"]},
    )
    assert code == 0
    lines = out.split()
    assert lines[0] != "1"
    assert set(lines[1:]) == set(os.listdir("/sys/class/net"))


def test_check_reports_what_it_cannot_do(backend: LinuxNsIsolation) -> None:
    from stockade.spec import InstanceSpec

    assert backend.check(InstanceSpec.from_dict({"name": "a"})) == []
    lines = backend.check(InstanceSpec.from_dict({"name": "a", "network": {"mode": "bridge"}}))
    try:
        from stockade_linux_ns.net import attach_instance_network  # noqa: F401
    except (ImportError, AttributeError):
        assert lines == [
            "network mode bridge: not available (stockade_linux_ns.net has no attach_instance_network)"
        ]
    else:
        assert lines == []


def test_bad_relaxation_errno_is_eperm_not_enosys() -> None:
    # clone3 is refused with ENOSYS on purpose (libc falls back to clone); the rest is EPERM.
    from stockade_linux_ns import seccomp

    assert "clone3" not in seccomp.denied_calls(frozenset())
    assert errno.EPERM == 1


def test_masks_share_one_read_only_tmpfs_and_dev_shm_is_hardened(instances: Instances) -> None:
    """Directory masks are one empty read-only tmpfs (binds of the first: CRIU archives each
    tmpfs on checkpoint and restore); /dev/shm is a nosuid, nodev, noexec bind inside /dev's
    tmpfs, writable by all (sticky) and holding what is written to it."""
    code, out = instances.run(
        process={
            "args": [
                "sh",
                "-c",
                "cat /proc/self/mountinfo; echo ==; ls -A /sys/firmware /proc/acpi; "
                "touch /sys/firmware/x 2>&1; echo data > /dev/shm/f && cat /dev/shm/f; "
                "cp /bin/busybox /dev/shm/bb && /dev/shm/bb true 2>&1; echo exec=$?; stat -c %a /dev/shm",
            ]
        }
    )
    assert code == 0, out
    info, rest = out.split("==\n", 1)
    mounts = {f[4]: f for f in (line.split() for line in info.splitlines())}
    masks = [mounts[p] for p in ("/sys/firmware", "/proc/acpi") if p in mounts]
    assert masks, info
    assert len({m[2] for m in masks}) == 1, masks  # one super block (major:minor)
    for m in masks:
        sep = m.index("-")
        assert m[sep + 1] == "tmpfs" and "ro" in m[5].split(",") and "ro" in m[sep + 3].split(","), m
    shm, dev = mounts["/dev/shm"], mounts["/dev"]
    assert shm[2] == dev[2] and shm[3] == "/shm", (shm, dev)
    assert {"nosuid", "nodev", "noexec"} <= set(shm[5].split(",")), shm
    assert "Read-only file system" in rest
    assert "data" in rest.splitlines()
    assert "exec=126" in rest and rest.splitlines()[-1] == "1777", rest
