"""Every restriction the isolation backend declares, measured by the in-instance probe."""

from __future__ import annotations

from typing import Any

import pytest

from ..features import Restriction
from .marks import requires
from .outcomes import inconclusive
from .plugin import note
from .probing import EXE_CHECK, ProbeRun, judge_enforced, judge_relaxed, probe_exe_escape, probe_in_instance
from .subject import Subject

ENFORCED = [pytest.param(r, id=r.value, marks=requires(r)) for r in Restriction]
RELAXED = [pytest.param(r, id=r.value, marks=requires(r, relaxable=True)) for r in Restriction]


class RestrictionSuite:
    """Subclass with a ``stockade_backends`` fixture: the probe checks each restriction."""

    @pytest.fixture(scope="class")
    @classmethod
    def probe_default(cls, stockade_subject: Subject, stockade_beacons: Any) -> ProbeRun:
        """One probe run in an instance with the defaults, shared by every restriction; the
        /proc/PID/exe escape from a second run that watches the runtime exec into it."""
        run = probe_in_instance(stockade_subject, stockade_beacons)
        if EXE_CHECK in run.results:
            exe = probe_exe_escape(stockade_subject, stockade_beacons).results.get(EXE_CHECK)
            if exe is not None:
                run.results[EXE_CHECK] = exe
        return run

    @pytest.mark.parametrize("restriction", ENFORCED)
    def test_restriction_enforced(self, restriction: Restriction, request: pytest.FixtureRequest) -> None:
        run: ProbeRun = request.getfixturevalue("probe_default")
        verdict = judge_enforced(restriction, run)
        for n in verdict.notes:
            note(request, n)
        assert verdict.ok, f"{restriction.value} is declared but not enforced: {verdict.summary}"
        if not verdict.shown:
            inconclusive(verdict.summary)

    @pytest.mark.parametrize("restriction", RELAXED)
    def test_restriction_relaxable(
        self,
        restriction: Restriction,
        request: pytest.FixtureRequest,
        stockade_subject: Subject,
        stockade_beacons: Any,
    ) -> None:
        baseline: ProbeRun = request.getfixturevalue("stockade_probe_baseline")
        run = probe_in_instance(
            stockade_subject, stockade_beacons, allow=[restriction], only=[restriction.value]
        )
        verdict = judge_relaxed(restriction, run, baseline)
        for n in verdict.notes:
            note(request, n)
        assert verdict.ok, f"{restriction.value} is declared relaxable but does not relax: {verdict.summary}"
        if not verdict.shown:
            inconclusive(verdict.summary)
