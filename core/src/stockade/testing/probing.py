"""Running the in-instance probe and judging its verdicts against a declaration.

A restriction the backend enforces must come out ``forbidden`` in a default instance
(no check ``allowed``). A relaxed one (``allow = [r]``) must come out ``allowed`` for
every check that the host itself can show allowed and whose other prerequisites are
relaxed too; what this kernel cannot show is reported as inconclusive, with its reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..features import Restriction
from .harness import run_once
from .outcomes import cannot_run
from .probe import CHECKS, CONTROLS, HostBeacons, ProbeResult, parse_facts, parse_results
from .subject import PROBE_PATH, Subject

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
