"""The sealed exec trampoline (CVE-2019-5736): the program itself, then through linux_ns."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from linux_ns_helpers import Instances, read_all
from stockade.errors import IsolationError
from stockade.interfaces import Stdio
from stockade.spec import Process
from stockade_linux_ns import trampoline

pytestmark = pytest.mark.skipif(not trampoline.available(), reason="no trampoline for this machine")

F_GET_SEALS = 1034


def _run(args: list[str], *, report: bool = True, argv0: bytes | None = None) -> tuple[int, bytes, bytes]:
    """Exec ``args`` through the program in a child; (exit code, its output, its report)."""
    out_r, out_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.dup2(out_w, 1)
            os.dup2(out_w, 2)
            os.dup2(rep_w, 3)
            os.closerange(4, 1 << 16)  # pytest's own
            rep_w = 3
            fd = trampoline.sealed_fd()
            if argv0 is not None:
                os.execve(fd, [argv0, *(a.encode() for a in args)], {"ONLY": "this"})
            trampoline.execve(
                fd, args[0], args[1:], {"ONLY": "this"}, report_fd=rep_w if report else -1, prefix="failed "
            )
        finally:
            os._exit(99)
    os.close(out_w)
    os.close(rep_w)
    out = read_all(out_r, 10).encode()
    rep = read_all(rep_r, 10).encode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, rep


_ASSEMBLERS = {
    "x86_64": ("x86_64-linux-gnu-as", "x86_64-linux-gnu-objcopy", ".intel_syntax noprefix\n"),
    "aarch64": ("aarch64-linux-gnu-as", "aarch64-linux-gnu-objcopy", ""),
}


@pytest.mark.parametrize("arch", sorted(_ASSEMBLERS))
def test_the_bytes_are_the_assembled_source(arch: str, tmp_path: Path) -> None:
    as_, objcopy, prelude = _ASSEMBLERS[arch]
    if os.uname().machine == arch:  # the native tools may go by their plain names
        as_, objcopy = shutil.which(as_) or "as", shutil.which(objcopy) or "objcopy"
    if not (shutil.which(as_) and shutil.which(objcopy)):
        pytest.skip(f"{as_} missing (binutils for {arch}; scripts/setup.sh installs them)")
    source = {"x86_64": trampoline._SOURCE_X86_64, "aarch64": trampoline._SOURCE_AARCH64}[arch]
    code = {"x86_64": trampoline._CODE_X86_64, "aarch64": trampoline._CODE_AARCH64}[arch]
    src = tmp_path / "t.s"
    src.write_text(f"{prelude}.globl _start\n_start:\n{source}")
    subprocess.run([as_, "-o", str(tmp_path / "t.o"), str(src)], check=True)
    subprocess.run(
        [objcopy, "-O", "binary", "-j", ".text", str(tmp_path / "t.o"), str(tmp_path / "t")], check=True
    )
    assert (tmp_path / "t").read_bytes() == code
    assert trampoline.elf(arch).endswith(code)


def test_the_aarch64_program_runs(tmp_path: Path) -> None:
    """Under qemu-user: qemu's execve is the kernel's, so the command runs natively."""
    qemu = shutil.which("qemu-aarch64-static")
    if os.uname().machine == "aarch64" or qemu is None:
        pytest.skip("the native run covers this machine; or qemu-user-static missing")
    prog = tmp_path / "tramp"
    prog.write_bytes(trampoline.elf("aarch64"))
    prog.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    r, w = os.pipe()
    mark = b"\x7f" + bytes([w + 1]) + b"failed "
    try:
        ok = subprocess.run(
            [qemu, "-0", mark, prog, "/bin/sh", "argv0", "-c", "echo $0-$1", "x", "y"],
            capture_output=True,
            pass_fds=(w,),
            check=False,
        )
        bad = subprocess.run(
            [qemu, "-0", mark, prog, str(plain), "p"], capture_output=True, pass_fds=(w,), check=False
        )
        other = subprocess.run([qemu, prog, "/bin/true"], capture_output=True, check=False)
    finally:
        os.close(w)
    report = read_all(r, 5)
    assert (ok.returncode, ok.stdout) == (0, b"x-y\n")
    assert bad.returncode == 127 and report == f"failed {errno.EACCES}\n"
    assert other.returncode == 127  # argv[0] without the mark: runs nothing


def test_execs_with_exactly_the_argv_and_env_given_and_closes_the_report_fd() -> None:
    script = 'tr "\\0" "|" < /proc/$$/cmdline; echo; tr "\\0" "\\n" < /proc/$$/environ; ls /proc/self/fd'
    code, out, rep = _run(["/bin/sh", "my-argv0", "-c", script, "a b", ""])
    assert code == 0 and rep == b""
    lines = out.decode().split("\n")
    assert lines[0] == f"my-argv0|-c|{script}|a b||"
    assert [x for x in lines if "=" in x] == ["ONLY=this"]
    # stdio and ls's own directory fd: the report pipe did not survive the exec
    assert sorted(int(x) for x in lines[1:] if x.isdigit()) == [0, 1, 2, 3]


def test_a_failed_exec_reports_the_errno_and_exits_127(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    for target, err in ((str(plain), errno.EACCES), ("/nonexistent", errno.ENOENT)):
        assert _run([target, target]) == (127, b"", f"failed {err}\n".encode())
        assert _run([target, target], report=False) == (127, b"", b"")


def test_an_exec_format_error_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02 not a program")
    bad.chmod(0o755)
    assert _run([str(bad), "bad"]) == (127, b"", f"failed {errno.ENOEXEC}\n".encode())


def test_started_any_other_way_it_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    # as the interpreter of '#!/proc/self/exe': argv[0] is the interpreter's path
    code, out, _ = _run(["/bin/sh", "-c", f"touch {marker}"], argv0=b"/proc/self/exe")
    assert (code, out, marker.exists()) == (127, b"", False)


def test_the_memfd_refuses_every_change() -> None:
    fd = trampoline.sealed_fd()
    try:
        assert os.get_inheritable(fd) is False
        seals = fcntl.fcntl(fd, F_GET_SEALS)
        assert seals == 1 | 2 | 4 | 8  # SEAL, SHRINK, GROW, WRITE
        # the CVE's path: the file reopened for writing through /proc
        w = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY)
        try:
            with pytest.raises(PermissionError):
                os.write(w, b"x")
            with pytest.raises(PermissionError):
                os.ftruncate(w, 0)
        finally:
            os.close(w)
        assert os.pread(fd, 4, 0) == b"\x7fELF"
    finally:
        os.close(fd)


def _exec(instances: Instances, ctx: object, args: tuple[str, ...]) -> tuple[int, str, float]:
    r, w = os.pipe()
    t0 = time.monotonic()
    try:
        sp = instances.backend.exec(ctx, Process(args=args), Stdio(stdout=w, stderr=w), lambda pid: None)  # type: ignore[arg-type]
    finally:
        os.close(w)
    out = read_all(r, 20)
    _, status = os.waitpid(sp.pid, 0)
    return os.waitstatus_to_exitcode(status), out, time.monotonic() - t0


def test_proc_self_exe_script_in_an_instance_never_runs_the_runtime(instances: Instances) -> None:
    ctx = instances.ctx(process={"args": ["sleep", "1000"]})
    instances.create(ctx)
    instances.backend.start(ctx)
    name = f"/tmp/trap-{os.getpid()}"
    try:
        code, _, _ = _exec(
            instances,
            ctx,
            (
                "sh",
                "-c",
                f"printf '#!/proc/self/exe\\n' > {name}; printf '\\1x' > {name}.bad; "
                f"chmod +x {name} {name}.bad",
            ),
        )
        assert code == 0
        # Through the runtime's own binary (Python) the script would run as a Python
        # program, whose first line is a comment: exit 0. Through the trampoline: 127.
        code, out, took = _exec(instances, ctx, (name,))
        assert (code, out) == (127, "") and took < 10
        with pytest.raises(IsolationError, match="Exec format error"):
            _exec(instances, ctx, (f"{name}.bad",))
        # the first process fails the same way: its message goes to its stderr
        code, out = instances.run(process={"args": [f"{name}.bad"]})
        assert code == 127 and f"execve failed with errno {errno.ENOEXEC}" in out
    finally:
        for f in (name, f"{name}.bad"):
            Path(str(instances.image) + f).unlink(missing_ok=True)
        instances.backend.destroy(ctx)
