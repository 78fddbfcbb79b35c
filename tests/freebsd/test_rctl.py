"""rctl rule strings (golden), the resource x action matrix, units and pcpu rounding."""

from __future__ import annotations

import pytest
from stockade_freebsd_jail.quota import stats_from_racct
from stockade_freebsd_jail.rctl import (
    DECAYING,
    DENIABLE,
    IO_RESOURCES,
    RESOURCES,
    Rule,
    action_problem,
    expand_amount,
    parse_racct,
    parse_rules,
    pcpu,
    rules_for,
    unsupported,
)

from .conftest import make_spec


def test_rules_for_a_spec_golden() -> None:
    spec = make_spec(
        resources={
            "memory": "256M",
            "cpus": 1.5,
            "pids": 100,
            "io": {"read_bps": "10M", "write_bps": "1M", "read_iops": 500, "write_iops": 200},
        }
    )
    assert [r.text() for r in rules_for(spec.resources, "stockade-t1-web")] == [
        "jail:stockade-t1-web:memoryuse:deny=268435456",
        "jail:stockade-t1-web:pcpu:deny=150",
        "jail:stockade-t1-web:maxproc:deny=100",
        "jail:stockade-t1-web:readbps:throttle=10485760",
        "jail:stockade-t1-web:writebps:throttle=1048576",
        "jail:stockade-t1-web:readiops:throttle=500",
        "jail:stockade-t1-web:writeiops:throttle=200",
    ]
    assert rules_for(make_spec().resources, "x") == []


@pytest.mark.parametrize("resource", sorted(RESOURCES))
@pytest.mark.parametrize("action", ["deny", "throttle", "log", "devctl", "sigterm"])
def test_validity_matrix(resource: str, action: str) -> None:
    problem = action_problem(resource, action)
    if action == "deny":
        assert (problem is None) == (resource in DENIABLE or resource == "memoryuse")
    elif action == "throttle":
        assert (problem is None) == (resource in IO_RESOURCES)
    else:
        assert problem is None  # log, devctl and signals go anywhere


def test_matrix_spot_checks() -> None:
    assert "use throttle" in (action_problem("readbps", "deny") or "")
    assert action_problem("writeiops", "deny") is not None
    assert action_problem("pcpu", "throttle") is not None
    assert action_problem("pcpu", "deny") is None and "pcpu" in DECAYING
    assert action_problem("memoryuse", "deny") is None
    assert action_problem("cputime", "deny") is not None
    assert action_problem("bogus", "deny") == "unknown resource 'bogus'"
    with pytest.raises(ValueError, match="readbps cannot be denied"):
        Rule("jail", "j", "readbps", "deny", 1)
    with pytest.raises(ValueError, match="subject id"):
        Rule("jail", "a:b", "maxproc", "deny", 1)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("512", 512),
        ("1k", 1024),
        ("1K", 1024),
        ("64m", 64 << 20),
        ("1g", 1 << 30),
        ("2t", 2 << 40),
        ("1p", 1 << 50),
        ("1e", 1 << 60),
        ("10mb", 10 << 20),
        ("7b", 7),
    ],
)
def test_unit_expansion(text: str, value: int) -> None:
    assert expand_amount(text) == value


@pytest.mark.parametrize("text", ["", "1.5g", "-1", "1x", "g"])
def test_unit_expansion_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        expand_amount(text)


def test_parse_expands_units() -> None:
    assert Rule.parse("jail:web:memoryuse:deny=1g").text() == "jail:web:memoryuse:deny=1073741824"
    with pytest.raises(ValueError):
        Rule.parse("jail:web:memoryuse:deny=1g/process")  # per-subject forms are not ours
    with pytest.raises(ValueError):
        Rule.parse("jail:web:readbps:deny=1m")


@pytest.mark.parametrize(
    ("cores", "pct"),
    [
        (1.5, 150),
        (0.5, 50),
        (0.01, 1),
        (0.001, 1),
        (0.125, 13),
        (0.335, 34),
        (0.334, 33),
        (2, 200),
        (0.995, 100),
    ],
)
def test_pcpu_rounding(cores: float, pct: int) -> None:
    assert pcpu(cores) == pct


def test_unsupported_limits_are_reported() -> None:
    spec = make_spec(
        resources={
            "memory": "64M",
            "memory_swap": "128M",
            "cpu_weight": 100,
            "cpuset_cpus": "0",
            "memory_reservation": "32M",
        }
    )
    lines = unsupported(spec.resources)
    assert len(lines) == 4
    assert unsupported(make_spec(resources={"memory": "64M", "memory_swap": -1}).resources) == []


def test_racct_parsing_and_stats() -> None:
    racct = parse_racct("cputime=3,datasize=1024,memoryuse=52428800,maxproc=4,pcpu=12,readbps=0\0")
    assert racct["memoryuse"] == 52428800 and racct["maxproc"] == 4
    spec = make_spec(resources={"memory": "64M", "cpus": 0.5, "pids": 10})
    stats = stats_from_racct(racct, spec.resources)
    assert stats.memory_used == 52428800 and stats.memory_limit == 64 << 20
    assert stats.cpu_usage_ns == 3_000_000_000 and stats.cpu_quota == 0.5
    assert stats.pids_current == 4 and stats.pids_limit == 10
    assert stats.io_read_bytes is None  # racct I/O counters are rates, not totals
    assert parse_rules("jail:a:maxproc:deny=10,jail:b:pcpu:deny=50") == [
        "jail:a:maxproc:deny=10",
        "jail:b:pcpu:deny=50",
    ]
