"""Resource limits, measured from inside the instance and from the kernel's counters."""

from __future__ import annotations

import re
import secrets
import subprocess
import time

import pytest

from ..features import Feature
from .harness import cpu_rate, pids_with, running, sh, wait_for
from .marks import requires
from .outcomes import cannot_run, inconclusive
from .plugin import note
from .subject import Subject

MIB = 1 << 20
BUSY = "while :; do :; done"


def _fmt(n: float) -> str:
    return f"{n / MIB:.1f} MiB"


class QuotaSuite:
    """Subclass with a ``stockade_backends`` fixture: memory, CPU, pids, I/O and freeze."""

    memory_limit = 64 * MIB
    cpu_quota = 0.25
    pids_limit = 16

    @requires(Feature.MEMORY_LIMIT)
    def test_memory_limit(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Allocate ever larger buffers inside until the allocation is killed or refused."""
        limit = self.memory_limit
        tol = stockade_subject.quota.semantics.memory_tolerance
        step = limit // 32
        sizes = list(range(limit // 2, int(limit * (1 + tol)) + 3 * step, step))
        script = (
            f"for b in {' '.join(map(str, sizes))}; do "
            "out=$(dd if=/dev/zero of=/dev/null bs=$b count=1 2>&1); rc=$?; "
            'case "$out" in *"1+0 records in"*) echo "ok $b";; *) echo "fail $b $rc"; break;; esac; done'
        )
        out = sh(stockade_subject, "test -c /dev/zero && " + script, resources={"memory": limit})
        if "ok " not in out.stdout and "fail " not in out.stdout:
            cannot_run(f"cannot allocate inside: no /dev/zero for dd ({out.stderr.strip()[:200]!r})")
        if not re.search(r"^ok ", out.stdout, re.M):
            cannot_run(f"even {_fmt(sizes[0])} could not be filled inside: {out.stdout[-200:]!r}")
        oks = [int(m) for m in re.findall(r"^ok (\d+)", out.stdout, re.M)]
        fails = [int(m) for m in re.findall(r"^fail (\d+)", out.stdout, re.M)]
        last_ok = max(oks, default=0)
        assert fails, (
            f"memory limit {_fmt(limit)} not enforced: a {_fmt(last_ok)} buffer was filled inside "
            f"(tolerance {tol:.0%}); output: {out.stdout[-300:]!r} {out.stderr[-200:]!r}"
        )
        first_fail = fails[0]
        note(
            request,
            f"memory limit {_fmt(limit)}: filled {_fmt(last_ok)}, killed/refused at {_fmt(first_fail)}",
        )
        assert first_fail <= limit * (1 + tol) + step, (
            f"memory limit {_fmt(limit)}: {_fmt(last_ok)} fitted, beyond the tolerance {tol:.0%}"
        )
        assert last_ok >= limit * (1 - tol) - step, (
            f"memory limit {_fmt(limit)}: already refused at {_fmt(first_fail)}, "
            f"below the tolerance {tol:.0%}"
        )

    @requires(Feature.CPU_QUOTA)
    def test_cpu_quota(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Two busy loops inside against the quota; an unlimited loop on the host as the control."""
        quota = self.cpu_quota
        bound = quota * 1.3 + 0.05
        token = f"stockade-cpu-{secrets.token_hex(4)}"
        script = f"{BUSY} & {BUSY}"
        last = ""
        for _attempt in range(3):
            with running(
                stockade_subject, ["/bin/sh", "-c", script, token], prefix="cpu", resources={"cpus": quota}
            ):
                assert wait_for(lambda: len(pids_with(token)) >= 2), "the busy loops did not start inside"
                control_token = f"stockade-cpu-control-{secrets.token_hex(4)}"
                control = subprocess.Popen(["/bin/sh", "-c", BUSY, control_token])
                try:
                    time.sleep(0.2)
                    used = cpu_rate(token, 1.5)
                    free = cpu_rate(control_token, 0.5)
                finally:
                    control.kill()
                    control.wait()
            last = f"inside {used:.2f} cores with a quota of {quota} (bound {bound:.2f}); control {free:.2f}"
            assert used <= bound, f"CPU quota not enforced: {last}"
            if free > 2 * bound:
                note(request, f"CPU quota {quota}: {last}")
                assert used >= quota * 0.3, f"CPU quota starves the instance: {last}"
                return
        inconclusive(f"the machine is too busy to tell an enforced quota from load: {last}")

    @requires(Feature.PIDS_LIMIT)
    def test_pids_limit(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Fork until refused: the count must stop at the limit."""
        limit = self.pids_limit
        cap = limit * 3
        script = (
            f"/bin/sh -c 'i=0; while [ $i -lt {cap} ]; do sleep 30 & i=$((i+1)); echo $i; done' "
            "> /tmp/forks 2>/dev/null; n=0; while read x; do n=$x; done < /tmp/forks; echo forks=$n"
        )
        out = sh(stockade_subject, script, resources={"pids": limit})
        m = re.search(r"forks=(\d+)", out.stdout)
        assert m, f"no fork count came back: {out.stdout!r} {out.stderr!r}"
        total = int(m.group(1)) + 2  # the two shells
        note(request, f"pids limit {limit}: {total} processes at most")
        assert total <= limit, f"pids limit {limit} not enforced: {total} processes ran"
        assert total >= limit - 3, f"pids limit {limit}: refused already at {total} processes"

    @requires(Feature.IO_RATE_LIMIT)
    def test_io_rate_limit(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Direct writes against write_bps: the measured rate must not exceed it."""
        rate = 4 * MIB
        count = 8
        # timed inside with /proc/uptime: busybox's dd does not say how long it took
        script = (
            "t0=$(cut -d' ' -f1 /proc/uptime); "
            f"{{ dd if=/dev/zero of=/io.bin bs=1048576 count={count} oflag=direct 2>&1 || "
            f"dd if=/dev/zero of=/io.bin bs=1048576 count={count} conv=fsync 2>&1; }} >/dev/null; "
            "t1=$(cut -d' ' -f1 /proc/uptime); "
            'awk "BEGIN { print \\"took \\" $t1 - $t0 }"'
        )

        def seconds(text: str) -> float | None:
            m = re.search(r"took ([\d.]+)", text)
            return float(m.group(1)) if m else None

        control = seconds(sh(stockade_subject, script).stdout)
        out = sh(stockade_subject, script, resources={"io": {"write_bps": rate}})
        took = seconds(out.stdout)
        assert took is not None, f"dd did not report its time: {out.stdout!r}"
        expected = count * MIB / rate
        note(request, f"write_bps {_fmt(rate)}/s: {count} MiB took {took:.2f} s (unlimited: {control} s)")
        if took < expected * 0.6 and control is not None and control >= expected * 0.6:
            inconclusive(f"the disk is too slow to tell: {count} MiB unlimited took {control:.2f} s")
        assert took >= expected * 0.6, (
            f"I/O rate limit not enforced: {count} MiB written in {took:.2f} s at a limit of "
            f"{_fmt(rate)}/s (expected >= {expected * 0.6:.2f} s)"
        )

    @requires(Feature.FREEZE)
    def test_freeze(self, stockade_subject: Subject) -> None:
        """A paused instance uses no CPU; resumed, it runs again."""
        token = f"stockade-freeze-{secrets.token_hex(4)}"
        with running(stockade_subject, ["/bin/sh", "-c", BUSY, token], prefix="freeze") as inst:
            assert wait_for(lambda: bool(pids_with(token))), "the busy loop did not start inside"
            inst.pause()
            assert inst.refresh().status == "paused"
            time.sleep(0.1)
            frozen = cpu_rate(token, 0.5)
            inst.resume()
            thawed = cpu_rate(token, 0.5)
            assert frozen < 0.02, f"a paused instance still used {frozen:.2f} cores"
            assert thawed > 0.02, f"a resumed instance did not run again ({thawed:.2f} cores)"
