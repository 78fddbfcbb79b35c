"""Running the in-instance probe and judging its verdicts against a declaration.

A restriction the backend enforces must come out ``forbidden`` in a default instance
(no check ``allowed``). A relaxed one (``allow = [r]``) must come out ``allowed`` for
every check that the host itself can show allowed and whose other prerequisites are
relaxed too; what this kernel cannot show is reported as inconclusive, with its reason.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from ..errors import StockadeError
from ..features import Restriction
from .harness import run_once, running
from .outcomes import cannot_run
from .probe import CHECKS, CONTROLS, HostBeacons, ProbeResult, parse_facts, parse_results
from .subject import EXE_TRAP_PATH, PROBE_PATH, Subject

EXE_CHECK = "escape.proc_exe_write"
EXE_WATCH_MS = 2500

R = Restriction
# Checks that can only come out allowed when another restriction is relaxed as well.
# Checks that show a restriction enforced but are not what its relaxation grants: opening a
# block device is for the device allow-list to decide, not for the right to create nodes.
NOT_RELAXED_BY: dict[str, str] = {
    "mknod.block_device_open": "opening a block device is the device allow-list's decision, not mknod's",
}

DEPENDS: dict[str, frozenset[Restriction]] = {
    "ptrace.host_pid": frozenset({R.HOST_PROCESSES}),
    "kernel_modify.dev_mem": frozenset({R.MKNOD}),
    "kernel_modify.dev_kmem": frozenset({R.MKNOD}),
    "kernel_modify.dev_port": frozenset({R.MKNOD}),
}


@dataclass(frozen=True)
class ProbeRun:
    results: dict[str, ProbeResult]
    facts: dict[str, str]
    status: int
    stderr: str


@dataclass
class Verdict:
    ok: bool  # False: the declaration does not hold
    shown: bool  # False: nothing could show it here (inconclusive)
    summary: str
    notes: list[str] = field(default_factory=list)


def checks_of(restriction: Restriction, *, escapes: bool = True) -> list[str]:
    return [
        c
        for c, r in CHECKS.items()
        if r == restriction and c not in CONTROLS and (escapes or not c.startswith("escape."))
    ]


def _show(r: ProbeResult) -> str:
    return f"{r.check}: {r.verdict}" + (f" {r.errno}" if r.errno else "") + f" ({r.detail})"


def probe_in_instance(
    subject: Subject, beacons: HostBeacons, *, allow: Iterable[Restriction] = (), only: Iterable[str] = ()
) -> ProbeRun:
    if subject.probe_problem:
        cannot_run(subject.probe_problem)
    args = [PROBE_PATH, *beacons.args()]
    for prefix in only:
        args += ["--only", prefix]
    out = run_once(subject, args, prefix="probe", allow=sorted(r.value for r in allow))
    return ProbeRun(parse_results(out.stdout), parse_facts(out.stdout), out.status, out.stderr)


def probe_exe_escape(
    subject: Subject, beacons: HostBeacons, *, allow: Iterable[Restriction] = ()
) -> ProbeRun:
    """escape.proc_exe_write as runc CVE-2019-5736 is exploited: the probe watches /proc
    while the suite execs the image's ``#!/proc/self/exe`` script into the instance again
    and again, so the runtime's own process enters it (and, if the exec goes through, its
    binary runs there); the probe tries to hold that binary and reopen it for writing."""
    if subject.probe_problem:
        cannot_run(subject.probe_problem)
    args = [PROBE_PATH, *beacons.args(), "--only", EXE_CHECK, "--exe-watch", str(EXE_WATCH_MS)]
    execs, refused = 0, ""
    with running(subject, args, prefix="probe-exe", allow=sorted(r.value for r in allow)) as inst:
        log = subject.suite_dir / f"{inst.name}.log"
        deadline = time.monotonic() + EXE_WATCH_MS / 1000 + 10
        time.sleep(0.1)  # the probe lists the processes already there first
        while inst.refresh().status == "running" and time.monotonic() < deadline:
            try:
                inst.run([EXE_TRAP_PATH], timeout=5)
            except StockadeError as e:  # a refused exec still brought the runtime in
                refused = str(e)
            execs += 1
            time.sleep(0.02)
        status = inst.wait(timeout=10)
    try:
        out = log.read_text(errors="replace")
    finally:
        with contextlib.suppress(OSError):
            log.unlink()
    results = parse_results(out)
    r = results.get(EXE_CHECK)
    if r is not None:
        why = f"; the exec itself failed: {refused}" if refused else ""
        results[EXE_CHECK] = replace(r, detail=f"{r.detail} ({execs} execs of {EXE_TRAP_PATH}{why})")
    return ProbeRun(results, parse_facts(out), status, "")


def probe_on_host(probe: str, beacons: HostBeacons, only: Iterable[str]) -> ProbeRun:
    """The baseline: what the host itself (this process's privileges) can show allowed."""
    args = [probe, *beacons.args()]
    for prefix in only:
        args += ["--only", prefix]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    return ProbeRun(parse_results(proc.stdout), parse_facts(proc.stdout), proc.returncode, proc.stderr)


def judge_enforced(restriction: Restriction, run: ProbeRun) -> Verdict:
    checks = checks_of(restriction)
    missing = [c for c in checks if c not in run.results]
    if missing:
        return Verdict(
            False,
            True,
            f"the probe did not report {', '.join(missing)} (exit {run.status}: {run.stderr[:200]})",
        )
    results = [run.results[c] for c in checks]
    allowed = [r for r in results if r.allowed]
    unclear = [r for r in results if r.verdict == "inconclusive"]
    notes = [f"inconclusive here: {_show(r)}" for r in unclear]
    if allowed:
        return Verdict(False, True, "allowed in a default instance: " + "; ".join(map(_show, allowed)), notes)
    if len(unclear) == len(results):
        return Verdict(
            True, False, "no check could show it on this kernel: " + "; ".join(map(_show, unclear))
        )
    return Verdict(True, True, f"{len(results) - len(unclear)} of {len(results)} checks forbidden", notes)


def judge_relaxed(restriction: Restriction, run: ProbeRun, baseline: ProbeRun) -> Verdict:
    allow = {restriction}
    checks = checks_of(restriction, escapes=False)
    required, notes = [], []
    for c in checks:
        host = baseline.results.get(c)
        if c in NOT_RELAXED_BY:
            notes.append(f"not required ({c}: {NOT_RELAXED_BY[c]})")
        elif host is None or not host.allowed:
            why = _show(host) if host else f"{c}: not reported on the host"
            notes.append(f"not required (the host itself cannot show it allowed): {why}")
        elif not DEPENDS.get(c, frozenset()) <= allow:
            also = ", ".join(sorted(r.value for r in DEPENDS[c] - allow))
            notes.append(f"not required ({c} also needs {also} relaxed)")
        else:
            required.append(c)
    missing = [c for c in required if c not in run.results]
    if missing:
        return Verdict(
            False, True, f"the probe did not report {', '.join(missing)} (exit {run.status})", notes
        )
    # "inconclusive" inside: the kernel could not tell (e.g. a host policy that no relaxation
    # reaches, like Debian's perf_event_paranoid=3); reported, neither passed nor failed
    unclear = [c for c in required if run.results[c].verdict == "inconclusive"]
    for c in unclear:
        notes.append(f"inconclusive inside the instance: {_show(run.results[c])}")
    required = [c for c in required if c not in unclear]
    refused = [run.results[c] for c in required if not run.results[c].allowed]
    if refused:
        return Verdict(
            False,
            True,
            f"still refused with allow=[{restriction.value}]: " + "; ".join(map(_show, refused)),
            notes,
        )
    if not required:
        return Verdict(
            True, False, f"no check of {restriction.value} can be shown allowed on this host", notes
        )
    return Verdict(True, True, f"{len(required)} of {len(checks)} checks allowed when relaxed", notes)
