"""Build the in-instance probe (probe.c) and read what it reports.

The probe runs inside instances whose image may be a bare busybox, so it is a
static C program; it is compiled once per source hash into a cache directory.
What each check attempts and how its verdict is decided: docs/probe.md.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from ...errors import StockadeError
from ...features import Restriction

PROBE_SOURCE = Path(__file__).with_name("probe.c")
CFLAGS: tuple[str, ...] = ("-static", "-O2", "-Wall", "-Wextra")
DEBIAN_PACKAGES = "gcc libc6-dev"

Verdict = Literal["forbidden", "allowed", "inconclusive"]
VERDICTS: tuple[str, ...] = get_args(Verdict)

R = Restriction
# Every check the probe emits, in the order it emits them, and the restriction
# it measures. The known escapes have no restriction of their own: each maps to
# the one whose relaxation would open it (docs/probe.md says why).
CHECKS: dict[str, Restriction] = {
    "kmod.finit_module": R.KMOD,
    "kmod.delete_module": R.KMOD,
    "kernel_modify.dev_mem": R.KERNEL_MODIFY,
    "kernel_modify.dev_kmem": R.KERNEL_MODIFY,
    "kernel_modify.dev_port": R.KERNEL_MODIFY,
    "kernel_modify.iopl": R.KERNEL_MODIFY,
    "kernel_modify.ioperm": R.KERNEL_MODIFY,
    "kernel_modify.bpf_prog_load": R.KERNEL_MODIFY,
    "kernel_modify.perf_event_open": R.KERNEL_MODIFY,
    "kernel_modify.kexec_file_load": R.KERNEL_MODIFY,
    "mount.tmpfs": R.MOUNT,
    "mount.umount": R.MOUNT,
    "mount.fsopen": R.MOUNT,
    "mknod.char_1_3": R.MKNOD,
    "mknod.block_device_open": R.MKNOD,
    "raw_sockets.inet_raw_icmp": R.RAW_SOCKETS,
    "raw_sockets.inet6_raw_icmpv6": R.RAW_SOCKETS,
    "raw_sockets.packet": R.RAW_SOCKETS,
    "net_admin.route_add": R.NET_ADMIN,
    "net_admin.link_flags": R.NET_ADMIN,
    "sysctl.proc_sys": R.SYSCTL,
    "sysctl.sys": R.SYSCTL,
    "chflags.immutable": R.CHFLAGS,
    "chflags.append": R.CHFLAGS,
    "foreign_network.host_loopback_tcp": R.FOREIGN_NETWORK,
    "foreign_network.host_abstract_unix": R.FOREIGN_NETWORK,
    "foreign_network.host_interfaces": R.FOREIGN_NETWORK,
    "host_processes.kill": R.HOST_PROCESSES,
    "host_processes.proc_entry": R.HOST_PROCESSES,
    "ptrace.host_pid": R.PTRACE,
    "ptrace.own_child": R.PTRACE,
    "ptrace.other_uid_child": R.PTRACE,
    "ptrace.process_vm_readv_other_uid": R.PTRACE,
    "keyring.syscall": R.KEYRING,
    "keyring.host_session": R.KEYRING,
    "sys_time.settimeofday": R.SYS_TIME,
    "new_userns.unshare": R.NEW_USERNS,
    "escape.release_agent": R.MOUNT,
    "escape.proc_exe_write": R.HOST_PROCESSES,
    "escape.leaked_fds": R.MOUNT,
    "escape.open_by_handle_at": R.MOUNT,
}

# Checks whose "allowed" is expected even in a well-restricted instance: they
# are controls showing the mechanism works at all (ptrace of one's own child).
CONTROLS: frozenset[str] = frozenset({"ptrace.own_child"})


class ProbeError(StockadeError):
    """The in-instance probe could not be built or its output not be read."""


class ProbeBuildError(ProbeError):
    errno = _errno.ENOENT


class ProbeOutputError(ProbeError):
    errno = _errno.EINVAL


@dataclass(frozen=True)
class ProbeResult:
    """One check's outcome as the probe reported it."""

    check: str
    verdict: Verdict
    errno: str | None
    detail: str

    @property
    def restriction(self) -> Restriction | None:
        return CHECKS.get(self.check)

    @property
    def forbidden(self) -> bool:
        return self.verdict == "forbidden"

    @property
    def allowed(self) -> bool:
        return self.verdict == "allowed"


def cache_dir() -> Path:
    """Where built probes are kept: $XDG_CACHE_HOME, else /var/cache for root, else ~/.cache."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "stockade" / "probe"
    if os.geteuid() == 0:
        return Path("/var/cache/stockade/probe")
    return Path.home() / ".cache" / "stockade" / "probe"


def _source_key(source: bytes) -> str:
    digest = hashlib.sha256(source)
    digest.update("\0".join(CFLAGS).encode())
    return digest.hexdigest()[:16]


def _find_compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return shutil.which("gcc") or shutil.which("cc")


def probe_binary(cache: Path | None = None) -> Path:
    """Path of the static probe built from the current source, compiling it if needed."""
    source = PROBE_SOURCE.read_bytes()
    target = (cache if cache is not None else cache_dir()) / f"probe-{_source_key(source)}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cc = _find_compiler()
    if cc is None:
        raise ProbeBuildError(
            "cannot build the in-instance probe: no C compiler found; "
            f"install the Debian packages {DEBIAN_PACKAGES} (apt-get install {DEBIAN_PACKAGES})"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ProbeBuildError(
            f"cannot create the probe cache {target.parent}: {e.strerror}; "
            "set XDG_CACHE_HOME to a writable directory"
        ) from e
    # Built under a private name then renamed: concurrent builders never see half a file.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(
            [cc, *CFLAGS, "-o", str(tmp), str(PROBE_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ProbeBuildError(_build_failure(cc, proc.stderr))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _build_failure(cc: str, stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if "error" in line.lower()] or stderr.splitlines()
    first = lines[0].strip() if lines else "no output"
    return (
        f"cannot build the in-instance probe with {cc} -static: {first}; "
        f"a static build needs the Debian packages {DEBIAN_PACKAGES}"
    )


def _records(text: str) -> Iterable[dict[str, object]]:
    # Whatever else the instance prints (a shell, the runtime) is skipped; only
    # lines that look like the probe's JSON must parse.
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeOutputError(f"probe output line {number} is not JSON: {line[:80]!r}") from e
        if not isinstance(record, dict):
            raise ProbeOutputError(f"probe output line {number} is not an object: {line[:80]!r}")
        yield record


def parse_results(text: str) -> dict[str, ProbeResult]:
    """The checks in the probe's output, by check name."""
    results: dict[str, ProbeResult] = {}
    for record in _records(text):
        if "check" not in record:
            continue
        check, verdict = record.get("check"), record.get("verdict")
        err, detail = record.get("errno"), record.get("detail", "")
        if not isinstance(check, str) or verdict not in VERDICTS:
            raise ProbeOutputError(f"probe output has a malformed check record: {record!r}")
        if (err is not None and not isinstance(err, str)) or not isinstance(detail, str):
            raise ProbeOutputError(f"probe output has a malformed check record: {record!r}")
        results[check] = ProbeResult(check, cast(Verdict, verdict), err, detail)
    return results


@dataclass(frozen=True)
class ConnectResult:
    """One ``--connect`` target as the probe reported it (not a check: the suite judges)."""

    target: str
    errno: str | None  # None: connected
    read: str  # the first line the peer sent, if it connected

    @property
    def connected(self) -> bool:
        return self.errno is None

    def show(self) -> str:
        if self.connected:
            return f"{self.target}: connected" + (f", read {self.read!r}" if self.read else "")
        return f"{self.target}: {self.errno}"


def parse_connects(text: str) -> dict[str, ConnectResult]:
    """The ``--connect`` records in the probe's output, by target."""
    out: dict[str, ConnectResult] = {}
    for record in _records(text):
        target = record.get("connect")
        if target is None:
            continue
        err, read = record.get("errno"), record.get("read", "")
        if not isinstance(target, str) or not isinstance(read, str):
            raise ProbeOutputError(f"probe output has a malformed connect record: {record!r}")
        if err is not None and not isinstance(err, str):
            raise ProbeOutputError(f"probe output has a malformed connect record: {record!r}")
        out[target] = ConnectResult(target, err, read)
    return out


def parse_facts(text: str) -> dict[str, str]:
    """The facts in the probe's output (pid, hostname, CapEff, namespaces, ...), by name."""
    facts: dict[str, str] = {}
    for record in _records(text):
        name, value = record.get("fact"), record.get("value")
        if isinstance(name, str) and isinstance(value, str):
            facts[name] = value
    return facts


def by_restriction(results: dict[str, ProbeResult]) -> dict[Restriction, list[ProbeResult]]:
    """Results grouped under the restriction each one measures."""
    grouped: dict[Restriction, list[ProbeResult]] = {}
    for result in results.values():
        restriction = result.restriction
        if restriction is not None:
            grouped.setdefault(restriction, []).append(result)
    return grouped
