"""The `stockade` command end to end: verbs, tables, one-line errors, detached instances."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def sk(root_dir: Path):  # type: ignore[no-untyped-def]
    """Run the CLI against the test's own root; cleans up its instances afterwards."""

    def run(*args: str, check: bool = True, timeout: float = 60, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
        r = subprocess.run(
            [sys.executable, "-m", "stockade", "--root", str(root_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
        if check:
            assert r.returncode == 0, f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}"
        return r

    yield run
    names = run("list", "-q", check=False).stdout.split()
    if names:
        run("delete", "-f", *names, check=False)
    run("gc", check=False)
    from _helpers import leftovers
    from stockade.host import host_tag

    assert leftovers(root_dir, host_tag(root_dir)) == []
    _wait_supervisor_gone(root_dir)


def _wait_supervisor_gone(root: Path) -> None:
    from stockade.supervisor_client import shutdown

    shutdown(str(root / "run"))
    sock = root / "run" / "supervisor.sock"
    deadline = time.monotonic() + 15
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sock.exists(), "the supervisor did not exit after its instances were gone"


def test_readme_main_job(sk) -> None:  # type: ignore[no-untyped-def]
    r = sk(
        "run",
        "--rm",
        "--memory",
        "64M",
        "--cpus",
        "0.5",
        "--pids",
        "64",
        "--hostname",
        "web1",
        "--",
        "sh",
        "-c",
        "hostname; ps; cat /proc/self/cgroup; mount",
    )
    lines = r.stdout.splitlines()
    assert lines[0] == "web1"
    ps = [line.split() for line in lines[1:] if line.split() and line.split()[0].isdigit()]
    assert ps[0][0] == "1" and len(ps) <= 3, r.stdout  # PID 1 is ours; no host processes
    assert "0::/" in r.stdout or ":/\n" in r.stdout
    assert "proc on /proc type proc" in r.stdout
    assert sk("list", "-q").stdout.strip() == ""  # --rm removed it


def test_exit_status_and_rm(sk) -> None:  # type: ignore[no-untyped-def]
    r = sk("run", "--rm", "--", "sh", "-c", "echo out; echo err >&2; exit 42", check=False)
    assert r.returncode == 42 and r.stdout == "out\n" and r.stderr == "err\n"


def test_rm_is_gone_when_run_returns(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The supervisor sends the exit status before its teardown ends; whoever looks right
    after must still never find the instance (they wait for the teardown)."""
    import threading

    from stockade import Host, NotFound

    host = Host(root_dir)
    stop = threading.Event()

    def look() -> None:  # someone who lists all along: may record an exit before the supervisor
        watcher = Host(root_dir)
        while not stop.is_set():
            watcher.instances()

    lister = threading.Thread(target=look)
    lister.start()
    try:
        for i in range(8):
            sk("run", "--rm", "--name", f"gone{i}", "--", "true")
            with pytest.raises(NotFound):
                host.get(f"gone{i}")
            assert f"gone{i}" not in [inst.name for inst in host.instances()]
    finally:
        stop.set()
        lister.join()
    sk("run", "--rm", "--name", "again", "--", "true")
    sk("run", "--rm", "--name", "again", "--", "true")  # the name is free at once


def test_detached_lifecycle(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    sk(
        "create",
        "web",
        "--memory",
        "64M",
        "--pids",
        "50",
        "--",
        "sh",
        "-c",
        "trap 'echo bye; exit 5' TERM; echo hello; while true; do sleep 0.1; done",
    )
    assert "created" in sk("list").stdout
    sk("start", "web")
    listing = json.loads(sk("list", "--format", "json").stdout)
    assert listing[0]["status"] == "running" and listing[0]["pid"]
    table = sk("list").stdout
    for col in ("NAME", "STATE", "BACKENDS", "PID", "CREATED", "LIMITS"):
        assert col in table
    assert "mem 64M" in table and "pids 50" in table
    assert sk("exec", "web", "--", "cat", "/proc/1/comm").stdout.strip() == "sh"
    assert sk("exec", "web", "--", "sh", "-c", "exit 3", check=False).returncode == 3
    stats = json.loads(sk("stats", "--format", "json", "web").stdout)[0]
    assert stats["quota"]["memory_limit"] == 64 << 20 and stats["quota"]["pids_limit"] == 50
    assert "MEM USED" in sk("stats", "web").stdout
    sk("pause", "web")
    assert json.loads(sk("list", "--format", "json").stdout)[0]["status"] == "paused"
    sk("resume", "web")
    sk("stop", "-t", "5", "web")
    st = json.loads(sk("list", "--format", "json").stdout)[0]
    assert st["status"] == "stopped" and st["exit_status"] == 5  # recorded by the supervisor
    logs = sk("logs", "web").stdout
    assert "hello" in logs and "bye" in logs
    assert "exited (5)" in sk("list").stdout
    sk("delete", "web")
    assert sk("list", "-q").stdout.strip() == ""


def test_detached_exit_recorded_without_anyone_waiting(sk) -> None:  # type: ignore[no-untyped-def]
    sk("run", "-d", "--name", "quick", "--", "sh", "-c", "exit 17")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = json.loads(sk("inspect", "quick").stdout)
        if st["exit_status"] is not None:
            break
        time.sleep(0.1)
    assert st["status"] == "stopped" and st["exit_status"] == 17
    sk("start", "quick")  # a stopped instance starts again
    assert sk("wait", "quick").stdout.strip() == "17"


def _on_a_terminal(root_dir: Path, *args: str) -> tuple[bytes, int]:
    """Run the CLI on a real terminal, as a person would, type one line into the shell it
    opens; return what the terminal showed and the exit status."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-m", "stockade", "--root", str(root_dir), *args])
    out = b""
    sent = False
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if b"\x1b[6n" in chunk:  # the shell's line editor asks where the cursor is
                    os.write(fd, b"\x1b[1;1R")
                if not sent and b"# " in out:  # a prompt: type like a person would
                    os.write(fd, b"tty; echo marker-$((6*7)); exit 4\r")
                    sent = True
    finally:
        _, ws = os.waitpid(pid, 0)
        os.close(fd)
    return out, os.waitstatus_to_exitcode(ws)


def test_exec_with_terminal(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    sk("run", "-d", "--name", "term", "--", "sleep", "60")
    out, code = _on_a_terminal(root_dir, "exec", "-t", "term", "--", "sh")
    assert b"marker-42" in out, out
    assert b"/dev/pts/" in out  # a terminal from the instance's own devpts
    assert code == 4


def test_run_with_terminal(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    out, code = _on_a_terminal(root_dir, "run", "--rm", "-t", "--", "sh")
    assert b"marker-42" in out and b"/dev/pts/" in out, out
    assert code == 4


def test_signals_reach_the_instance(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """What the attached CLI gets (SIGTERM, SIGINT, ...) it passes on to the instance."""
    script = 'trap "echo got-term; exit 5" TERM; echo up; while :; do sleep 0.1; done'
    p = subprocess.Popen(
        [sys.executable, "-m", "stockade", "--root", str(root_dir), "run", "--rm", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert p.stdout is not None and p.stdout.readline() == b"up\n"
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
    finally:
        p.kill()
    assert p.returncode == 5, err
    assert out == b"got-term\n"


def test_forwarded_command_line(sk, root_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """run/create/start are parsed by the supervisor: what depends on the client (its cwd,
    its stdio, even a closed one) must still be the client's."""
    (tmp_path / "s.toml").write_text('hostname = "from-spec"\n')
    r = sk("run", "--rm", "--spec", "s.toml", "--", "hostname", cwd=tmp_path)
    assert r.stdout == "from-spec\n"
    r = sk("run", "--rm", "-i", "--", "sh", "-c", "cat; exit 3", input="piped in\n", check=False)
    assert (r.returncode, r.stdout) == (3, "piped in\n")
    r = sk("run", "--rm", "--", "sh", "-c", "cat; echo done", input="not for it\n")
    assert r.stdout == "done\n"  # without -i the instance's stdin is /dev/null
    closed = subprocess.run(
        f"{sys.executable} -m stockade --root {root_dir} run --rm -- echo fine <&- 2>&-",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (closed.returncode, closed.stdout) == (0, "fine\n")
    env = {**os.environ, "STOCKADE_ROOT": str(root_dir)}  # --root's default, client side too
    subprocess.run(
        [sys.executable, "-m", "stockade", "run", "-d", "--name", "by-env", "--", "sleep", "30"],
        env=env,
        check=True,
        timeout=60,
    )
    assert "by-env" in sk("list", "-q").stdout.split()
    from stockade.supervisor_client import request

    def supervisor_pid() -> int:
        return int(request(str(root_dir), str(root_dir / "run"), {"op": "ping"})["pid"])

    before = supervisor_pid()
    for bad in (["create", "by-env", "--", "true"], ["run", "--memory", "1K", "--", "true"]):
        assert sk(*bad, check=False).returncode != 0
    assert supervisor_pid() == before  # errors are replies, never the supervisor's end
    r = sk("run", "--rm", "--no-such-flag", "--", "true", check=False)
    assert r.returncode == 2 and "unrecognized arguments: --no-such-flag" in r.stderr
    assert r.stderr.startswith("usage: stockade")
    assert sk("run", "--help").stdout.startswith("usage: stockade")


def test_backends_table(sk) -> None:  # type: ignore[no-untyped-def]
    out = sk("backends").stdout
    for word in ("KIND", "CAN RUN", "linux_ns", "cgroup", "overlay", "dir"):
        assert word in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--memory", "12XB", "--", "true"], "resources.memory: '12XB' is not a size"),
        (["run", "--image", "nosuch", "--", "true"], "image 'nosuch' not found"),
        (["run", "--allow", "mnt", "--", "true"], "did you mean 'mount'"),
        (["run", "--isolation", "nosuch", "--", "true"], "no isolation backend named 'nosuch'"),
        (["start", "ghost"], "no instance named 'ghost'"),
        (["run", "--storage", "zfs", "--", "true"], "storage backend 'zfs' cannot run here"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(sk, root_dir: Path, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    before = (
        sorted(p.name for p in (root_dir / "instances").glob("*"))
        if (root_dir / "instances").exists()
        else []
    )
    r = sk(*args, check=False)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    after = (
        sorted(p.name for p in (root_dir / "instances").glob("*"))
        if (root_dir / "instances").exists()
        else []
    )
    assert before == after


def test_unknown_field_in_spec_file(sk, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "s.toml"
    f.write_text('hostnme = "x"\n[resources]\nmemory = "64M"\n')
    r = sk("create", "specced", "--spec", str(f), check=False)
    assert r.returncode == 2 and "hostnme: unknown field (did you mean 'hostname'?)" in r.stderr


def test_name_clash(sk) -> None:  # type: ignore[no-untyped-def]
    sk("create", "twin", "--", "true")
    r = sk("create", "twin", "--", "true", check=False)
    assert r.returncode != 0 and "instance 'twin' already exists" in r.stderr
    assert json.loads(sk("list", "--format", "json").stdout)[0]["status"] == "created"


def test_debug_shows_traceback(sk) -> None:  # type: ignore[no-untyped-def]
    r = sk("--debug", "start", "ghost", check=False)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_requests_survive_the_supervisor_idling_out(root_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that lands in the backlog just as the supervisor idles out is reset by the
    kernel, unread: the client must send it again to the next supervisor, not fail."""
    from stockade.supervisor_client import request

    monkeypatch.setenv("STOCKADE_SUPERVISOR_IDLE", "0.02")  # inherited by each supervisor spawned
    run_dir = str(root_dir / "run")
    started = set()
    for i in range(40):
        reply = request(str(root_dir), run_dir, {"op": "ping"})
        assert reply["ok"]
        started.add(reply.get("pid"))
        time.sleep(0.04 + (i % 8) * 0.005)  # sweep across the moment it decides to exit
    assert len(started) > 1, "the supervisor never idled out: the test did not reach the race"


def test_supervisor_serves_only_its_own_user(sk, root_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Whoever talks to the supervisor runs instances as root: another user can neither
    connect (socket mode 0600) nor, if the mode were loosened, get an answer (peer creds)."""
    import socket

    sk("run", "--rm", "--", "true")  # leaves the supervisor warm
    sock = root_dir / "run" / "supervisor.sock"
    assert sock.exists() and (sock.stat().st_mode & 0o777) == 0o600

    def as_nobody() -> int:
        """Child's exit code: 0 refused at connect, 1 connected but got EOF, 2 got an answer."""
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(sock))
                except PermissionError:
                    code = 0
                else:
                    try:
                        s.sendall(b'{"op":"ping"}\n')
                        code = 2 if s.recv(100) else 1
                    except (ConnectionResetError, BrokenPipeError):
                        code = 1
            finally:
                os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    modes = {d: d.stat().st_mode & 0o777 for d in (root_dir, root_dir / "run")}
    try:
        for d in modes:
            os.chmod(d, 0o711)  # the way there is open: only the socket's mode stops them
        assert as_nobody() == 0
        os.chmod(sock, 0o666)
        assert as_nobody() == 1
    finally:
        os.chmod(sock, 0o600)
        for d, mode in modes.items():
            os.chmod(d, mode)
