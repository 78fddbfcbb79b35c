"""The suite checks itself: the example chroot backend passes as declared, liars fail.

Each run is a separate pytest process (the suite as a backend author runs it); the
assertions read the outcomes it records (--stockade-results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

MODULE = """
import sys
sys.path.insert(0, {here!r})
from liars import ChrootPlugin, LiarsPlugin
from stockade.plugins import PluginManager
from stockade.testing import BackendChoice, ConformanceSuite

PLUGINS = PluginManager(extra=[("chroot-example", ChrootPlugin()), ("liars", LiarsPlugin())])


class TestChroot(ConformanceSuite):
    backends = BackendChoice(isolation="chroot", quota="cgroup", storage="dir", plugins=PLUGINS)


class TestLiars(ConformanceSuite):
    backends = BackendChoice(isolation="lying_chroot", quota="lying_quota", storage="dir", plugins=PLUGINS)
"""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the conformance suite runs instances: needs root")


def run_suite(d: Path, module: str, *args: str) -> dict[str, Any]:
    """Run the suite in a pytest subprocess on ``module`` (a test module's text) in ``d``;
    the outcomes it records (--stockade-results), asserted to exist."""
    (d / "test_backends.py").write_text(module)
    (d / "pytest.ini").write_text("[pytest]\n")
    results = d / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "stockade.testing",
            "-p",
            "no:cacheprovider",
            "-c",
            str(d / "pytest.ini"),
            "--rootdir",
            str(d),
            "-q",
            f"--stockade-results={results}",
            *args,
            str(d / "test_backends.py"),
        ],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert results.exists(), proc.stdout[-3000:] + proc.stderr[-2000:]
    data: dict[str, Any] = json.loads(results.read_text())
    return data


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    data = run_suite(tmp_path_factory.mktemp("suite"), MODULE.format(here=str(HERE)))
    by: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in data["records"]:
        label = data["subjects"][rec["class"]]["label"]
        by.setdefault(label, {}).setdefault(rec["column"], []).append(rec)
    return by


def cell(outcomes: dict[str, dict[str, list[dict[str, Any]]]], label: str, column: str) -> set[str]:
    return {r["outcome"] for r in outcomes[label][column]}


def test_chroot_passes_as_declared(outcomes: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    row = "chroot+cgroup+dir"
    assert cell(outcomes, row, "fs_isolation") == {"pass"}
    assert cell(outcomes, row, "lifecycle") <= {"pass", "not supported"}
    assert "pass" in cell(outcomes, row, "lifecycle")
    assert cell(outcomes, row, "network_isolation") == {"not supported"}
    for column, recs in outcomes[row].items():
        assert all(r["outcome"] != "fail" for r in recs), f"{column}: {recs}"
        if column.startswith("restriction."):
            assert {r["outcome"] for r in recs} == {"not supported"}, f"{column}: {recs}"


def test_liars_fail(outcomes: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    row = "lying_chroot+lying_quota+dir"
    assert cell(outcomes, row, "memory_limit") == {"fail"}
    assert cell(outcomes, row, "pids_limit") == {"fail"}
    assert "fail" in cell(outcomes, row, "restriction.host_processes")
    assert "fail" in cell(outcomes, row, "restriction.mount")
    # what it declares truthfully still passes; what it does not declare is not supported
    assert cell(outcomes, row, "fs_isolation") == {"pass"}
    assert cell(outcomes, row, "restriction.ptrace") == {"not supported"}
    assert cell(outcomes, row, "cpu_quota") == {"not supported"}
    mem = outcomes[row]["memory_limit"][0]["why"]
    assert "not enforced" in mem


def test_option_words_round_trip() -> None:
    from stockade.testing.declared import option_words, options_of, parse_option

    opts = options_of(["overlay.quota_fs=btrfs", "cgroup.cgroup_timeout=2.5", "zfs.parent=tank/x"])
    assert opts == {
        "overlay": {"quota_fs": "btrfs"},
        "cgroup": {"cgroup_timeout": 2.5},
        "zfs": {"parent": "tank/x"},
    }
    assert options_of(option_words(opts)) == opts
    for bad in ("quota_fs=btrfs", "overlay.quota_fs", ".x=1", "overlay.=1"):
        with pytest.raises(ValueError, match="BACKEND.KEY=VALUE"):
            parse_option(bad)


def test_backend_options_reach_the_suite(tmp_path: Path) -> None:
    """--stockade-option (what `stockade conformance --option` passes) builds the backends
    with it: overlay's disk-quota mode declares and passes disk quota, and the row says so."""
    data = run_suite(
        tmp_path,
        "from stockade.testing import ConformanceSuite\n\nclass TestOne(ConformanceSuite):\n    pass\n",
        "-k",
        "test_disk_quota",
        "--stockade-isolation=linux_ns",
        "--stockade-quota=cgroup",
        "--stockade-storage=overlay",
        "--stockade-option=overlay.quota_fs=btrfs",
    )
    (subject,) = data["subjects"].values()
    assert subject["label"] == "linux_ns+cgroup+overlay (overlay.quota_fs=btrfs)"
    outcomes = {r["outcome"] for r in data["records"] if r["column"] == "disk_quota"}
    if outcomes == {"cannot run here"}:
        pytest.skip(f"no loop-backed btrfs here: {data['records']}")
    assert outcomes == {"pass"}, data["records"]


def test_conformance_cli_refuses_a_malformed_option() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "stockade", "conformance", "--option", "quota_fs=btrfs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "stockade: error: --option: backend option 'quota_fs=btrfs': write BACKEND.KEY=VALUE, "
        "e.g. overlay.quota_fs=btrfs"
    ]
