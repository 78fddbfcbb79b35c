"""The conformance suite's in-instance probe (docs/probe.md).

``probe_binary()`` builds the static probe, ``host_beacons()`` sets up what it
must not reach on the host, ``parse_results()`` reads its verdicts.
"""

from __future__ import annotations

from .build import (
    CHECKS,
    CONTROLS,
    ConnectResult,
    ProbeBuildError,
    ProbeError,
    ProbeOutputError,
    ProbeResult,
    Verdict,
    by_restriction,
    parse_connects,
    parse_facts,
    parse_results,
    probe_binary,
)
from .host import HostBeacons, host_beacons, host_interfaces, host_listener

__all__ = [
    "CHECKS",
    "CONTROLS",
    "ConnectResult",
    "HostBeacons",
    "ProbeBuildError",
    "ProbeError",
    "ProbeOutputError",
    "ProbeResult",
    "Verdict",
    "by_restriction",
    "host_beacons",
    "host_interfaces",
    "host_listener",
    "parse_connects",
    "parse_facts",
    "parse_results",
    "probe_binary",
]
