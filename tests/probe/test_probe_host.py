"""The probe run directly on the host as root: each check must detect success.

This is what shows a "forbidden" elsewhere is a real refusal and not a check
that can never succeed. The host must be unchanged afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from stockade.testing.probe import CHECKS, HostBeacons

from .probe_helpers import RunProbe, diff_state, host_state, needs_root, proc_status

pytestmark = needs_root

# Allowed for root on any Linux host with the feature built in.
ALLOWED_ON_HOST = [
    "kernel_modify.bpf_prog_load",
    "kernel_modify.perf_event_open",
    "mount.tmpfs",
    "mount.umount",
    "mount.fsopen",
    "mknod.char_1_3",
    "raw_sockets.inet_raw_icmp",
    "raw_sockets.packet",
    "net_admin.route_add",
    "net_admin.link_flags",
    "sysctl.proc_sys",
    "sysctl.sys",
    "chflags.immutable",
    "chflags.append",
    "foreign_network.host_loopback_tcp",
    "foreign_network.host_abstract_unix",
    "foreign_network.host_interfaces",
    "host_processes.kill",
    "host_processes.proc_entry",
    "ptrace.host_pid",
    "ptrace.own_child",
    "ptrace.other_uid_child",
    "ptrace.process_vm_readv_other_uid",
    "keyring.syscall",
    "keyring.host_session",
    "sys_time.settimeofday",
    "new_userns.unshare",
    "escape.open_by_handle_at",
]
# Depend on the kernel's configuration (this test kernel has no modules, /dev/mem,
# iopl or kexec): allowed where built in, inconclusive with the errno that says so.
KERNEL_CONFIG = {
    "kmod.finit_module": {"ENOSYS"},
    "kmod.delete_module": {"ENOSYS"},
    "kernel_modify.dev_mem": {"ENXIO", "ENODEV"},
    "kernel_modify.dev_kmem": {"ENXIO", "ENODEV"},  # removed from Linux in 5.13
    "kernel_modify.dev_port": {"ENXIO", "ENODEV"},
    "kernel_modify.iopl": {"ENOSYS"},
    "kernel_modify.ioperm": {"ENOSYS"},
    "kernel_modify.kexec_file_load": {"ENOSYS"},
    "raw_sockets.inet6_raw_icmpv6": {"EAFNOSUPPORT"},
}


def root_fstype() -> str:
    fstype = ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[1] == "/":
                fstype = fields[2]  # the last mount on / is the visible one
    return fstype


def test_host_run_detects_success_and_leaves_the_host_unchanged(
    run_probe: RunProbe, beacons: HostBeacons
) -> None:
    before = host_state()
    run = run_probe(beacons.args())
    after = host_state()

    assert list(run.results) == list(CHECKS)
    wrong = {
        c: (run.results[c].verdict, run.results[c].errno, run.results[c].detail)
        for c in ALLOWED_ON_HOST
        if not run.results[c].allowed
    }
    assert not wrong, f"checks that did not detect success on the host: {wrong}"
    for check, errnos in KERNEL_CONFIG.items():
        result = run.results[check]
        assert result.allowed or (result.verdict == "inconclusive" and result.errno in errnos), (
            check,
            result,
        )
    # Host specific, but never undecided: the node is made, opening a disk may be refused.
    block = run.results["mknod.block_device_open"]
    assert block.verdict in ("allowed", "forbidden") and "mknod" not in block.detail
    # A running executable is never writable (ETXTBSY); the check must have tried some.
    assert run.results["escape.proc_exe_write"].errno == "ETXTBSY"
    assert run.results["escape.leaked_fds"].forbidden  # subprocess closes every other fd
    # cgroup v1 is mounted here, and root may write its release_agent (written back unchanged)
    if any(Path("/sys/fs/cgroup").glob("*/release_agent")):
        assert run.results["escape.release_agent"].allowed
    assert "token" in run.results["foreign_network.host_loopback_tcp"].detail

    assert run.facts["pid"] != "1" and int(run.facts["processes_visible"]) > 5
    assert run.facts["ns_pid"] == os.readlink("/proc/self/ns/pid")
    assert run.facts["no_new_privs"] == "0" and run.facts["seccomp"] == "0"
    assert "scratch_left" not in run.facts

    assert not diff_state(before, after), f"the probe changed the host: {diff_state(before, after)}"
    # the sleeping beacon was seized by a tracer that exited: it must be untraced and running
    status = proc_status(beacons.pid)
    assert status["TracerPid"] == "0" and status["State"].startswith("S"), status


def test_chflags_on_a_loop_ext4(run_probe: RunProbe, loop_ext4: Path) -> None:
    run = run_probe(["--only", "chflags", "--flags-dir", str(loop_ext4)])
    for check in ("chflags.immutable", "chflags.append"):
        assert run.results[check].allowed, run.results[check]
        assert f"{loop_ext4}: ok" in run.results[check].detail
    assert sorted(p.name for p in loop_ext4.iterdir()) == ["lost+found"]


def test_leaked_directory_fd_is_found(probe: Path, run_probe: RunProbe) -> None:
    """In a chroot, an inherited fd to a directory outside it is an escape; so is the
    'shocker' file handle when the chroot is a subtree of an ext4 root."""
    root = Path(tempfile.mkdtemp(prefix="stockade-test-probe-"))
    outside = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)
    try:
        shutil.copy2(probe, root / "probe")

        def enter() -> None:
            os.chroot(root)
            os.chdir("/")

        only = ["--only", "escape.leaked_fds", "--only", "escape.open_by_handle_at"]
        leaked = run_probe(only, program="/probe", preexec_fn=enter, pass_fds=[outside])
        result = leaked.results["escape.leaked_fds"]
        assert result.allowed and f"fd {outside} " in result.detail and "OUTSIDE" in result.detail

        clean = run_probe(only, program="/probe", preexec_fn=enter)
        assert clean.results["escape.leaked_fds"].forbidden
        handle = clean.results["escape.open_by_handle_at"]
        assert handle.allowed  # root with CAP_DAC_READ_SEARCH
        if root_fstype() in ("ext2", "ext3", "ext4"):  # whose root directory is inode 2
            assert "OUTSIDE the root" in handle.detail
        assert sorted(p.name for p in root.iterdir()) == ["probe"]
    finally:
        os.close(outside)
        shutil.rmtree(root, ignore_errors=True)


def _exe_watch(probe: Path, userspec: str | None) -> tuple[str, str, str]:
    """The probe alone in a chroot with a pid namespace and /proc of its own, watching
    (--exe-watch) while a copy of ``sleep`` from outside the chroot enters that pid
    namespace (nsenter: a runtime's exec). The verdict, errno and detail of the check."""
    import signal
    import subprocess
    import time

    for tool in ("unshare", "nsenter", "chroot", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: util-linux, coreutils, mount)")
    top = Path(tempfile.mkdtemp(prefix="stockade-test-probe-"))
    root, outside = top / "root", top / "outside"
    (root / "proc").mkdir(parents=True)
    outside.mkdir()
    shutil.copy2(probe, root / "probe")
    # copies of their own: the probe opens what it catches for writing (never writes)
    runtime = outside / "runtime-sleep"
    shutil.copy2(shutil.which("sleep") or "/bin/sleep", runtime)
    nsenter = outside / "runtime-nsenter"  # its child is the first to enter
    shutil.copy2(shutil.which("nsenter") or "/usr/bin/nsenter", nsenter)
    chroot = ["chroot", *([f"--userspec={userspec}"] if userspec else []), str(root)]
    script = f'mount -t proc proc "{root}/proc" && exec "$@"'
    cmd = ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    cmd += [*chroot, "/probe", "--only", "escape.proc_exe_write", "--exe-watch", "3000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        inner = None
        while inner is None and time.monotonic() < deadline:  # the probe: pid 1 of the new namespace
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        if Path(f"/proc/{entry}/root").resolve() == root and os.readlink(
                            f"/proc/{entry}/exe"
                        ).endswith("/probe"):
                            inner = int(entry)
                    except OSError:
                        continue
            time.sleep(0.02)
        assert inner is not None, "the probe did not start in its chroot"
        time.sleep(0.2)  # it lists the processes already there first
        subprocess.run([str(nsenter), "-t", str(inner), "-p", "--", str(runtime), "0.05"], check=True)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        subprocess.run(["umount", f"{root}/proc"], check=False, capture_output=True)
        shutil.rmtree(top, ignore_errors=True)
    from stockade.testing.probe import parse_results

    r = parse_results(out)["escape.proc_exe_write"]
    return r.verdict, r.errno or "", r.detail.replace(str(outside), "OUTSIDE")


def test_exe_watch_catches_a_runtime_binary_entering(probe: Path) -> None:
    """The CVE-2019-5736 check detects success: root in a plain chroot holds the binary of a
    process that entered its pid namespace from outside and reopens it for writing once
    the process is gone (closed at once: nothing is written)."""
    verdict, _errno, detail = _exe_watch(probe, None)
    assert verdict == "allowed", detail
    assert re.search(r"OUTSIDE/runtime-(sleep|nsenter) \(opened for writing\)", detail), detail


def test_exe_watch_refused_to_another_user(probe: Path) -> None:
    """The same entry seen by an unprivileged user: the root-owned process's exe cannot be
    held (EACCES: the ptrace access check of /proc/PID/exe), so the check is forbidden."""
    verdict, errno, detail = _exe_watch(probe, "65534:65534")
    assert (verdict, errno) == ("forbidden", "EACCES"), detail
