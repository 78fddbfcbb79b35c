"""The suite checks itself: the example chroot backend passes as declared, liars fail.

Each run is a separate pytest process (the suite as a backend author runs it); the
assertions read the outcomes it records (--stockade-results).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def suite_module(**classes: tuple[str, str, str, str]) -> str:
    """A test module for :func:`run_suite`: each class (suite, isolation, quota, storage) on
    the example chroot backend and the liars, registered as plugins of its own."""
    out = [
        "import sys",
        f"sys.path.insert(0, {str(HERE)!r})",
        "from liars import ChrootPlugin, LiarsPlugin",
        "from stockade.plugins import PluginManager",
        "from stockade import testing",
        'PLUGINS = PluginManager(extra=[("chroot-example", ChrootPlugin()), ("liars", LiarsPlugin())])',
    ]
    for name, (suite, iso, quota, storage) in classes.items():
        out += [
            f"class {name}(testing.{suite}):",
            f"    backends = testing.BackendChoice(isolation={iso!r}, quota={quota!r}, storage={storage!r},"
            " plugins=PLUGINS)",
        ]
    return "\n".join(out) + "\n"


def records_by_row(data: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """A suite run's records by (row label, test name)."""
    by_label = {s["label"]: key for key, s in data["subjects"].items()}
    return {
        (label, r["nodeid"].rsplit("::", 1)[-1]): r
        for label, key in by_label.items()
        for r in data["records"]
        if r["class"] == key
    }


MODULE = suite_module(
    TestChroot=("ConformanceSuite", "chroot", "cgroup", "dir"),
    TestLiars=("ConformanceSuite", "lying_chroot", "lying_quota", "dir"),
)

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
            "-rs",
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
    data["pytest"] = {"exit": proc.returncode, "stdout": proc.stdout}
    return data


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[dict[str, Any]]]]:
    data = run_suite(tmp_path_factory.mktemp("suite"), MODULE)
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


MISSING = suite_module(
    TestAbsent=("ConformanceSuite", "chroot", "cgroup", "absent_storage"),
    TestToolless=("ConformanceSuite", "chroot", "cgroup", "toolless_storage"),
)


def test_missing_prerequisite_is_cannot_run_here(tmp_path: Path) -> None:
    """A backend whose probe() says no, and one whose fixture (the image import) finds a tool
    missing: every test that needs the subject is a skip saying "cannot run here" and why;
    what the backends do not declare is still "not supported"; nothing passes or fails."""
    from conformance.liars import MISSING_MODULE, MISSING_TOOL
    from stockade.testing.matrix import Matrix

    data = run_suite(tmp_path, MISSING)
    by_label = {s["label"]: key for key, s in data["subjects"].items()}
    matrix = Matrix.from_results([data])
    rows = {r.label: r for r in matrix.rows}
    for storage, reason in (("absent_storage", MISSING_MODULE), ("toolless_storage", MISSING_TOOL)):
        label = f"chroot+cgroup+{storage}"
        recs = [r for r in data["records"] if r["class"] == by_label[label]]
        assert recs, data["records"]
        assert {r["outcome"] for r in recs} == {"cannot run here", "not supported"}, recs
        for r in recs:
            if r["outcome"] == "cannot run here":
                assert reason in r["why"], r
        # declared by chroot / cgroup / the storage, measured through the subject: cannot run
        row = rows[label]
        for column in ("fs_isolation", "snapshot", "memory_limit", "lifecycle"):
            cell = row.cells[column]
            assert cell.outcome == "cannot run here", (column, cell)
            assert any(reason in why for why in cell.why), (column, cell.why)
        # undeclared: not supported, from the declarations alone
        assert row.cells["network_isolation"].outcome == "not supported"
        assert row.cells["restriction.mount"].outcome == "not supported"
    # pytest itself saw skips with that reason (-rs), and nothing else
    out = data["pytest"]["stdout"]
    assert data["pytest"]["exit"] == 0, out[-3000:]
    assert f"cannot run here: storage backend 'absent_storage' cannot run here: {MISSING_MODULE}" in out
    assert MISSING_TOOL in out
    assert re.search(r"^\d+ skipped in ", out.strip().splitlines()[-1]), out[-500:]
    md = matrix.to_markdown()
    assert "cannot run here [" in md and MISSING_MODULE in md and MISSING_TOOL in md, md
    assert "pass" not in md.split("### Notes")[0] and "FAIL" not in md, md


LEAKY = suite_module(
    TestLeakyLoop=("LifecycleSuite", "chroot", "cgroup", "leaky_loop_storage"),
    TestLeakyFile=("LifecycleSuite", "chroot", "cgroup", "leaky_file_storage"),
)


def _detach_loops_under(d: Path) -> list[str]:
    from stockade.testing.harness import loop_devices_under

    found = sorted(loop_devices_under(d))
    for entry in found:
        dev = entry.split()[1]
        subprocess.run(["losetup", "-d", dev], check=False)
    return found


def test_delete_leaving_a_loop_device_or_a_file_fails(tmp_path: Path) -> None:
    """Storage whose delete leaves a loop device (backed by a file in the root) or a stray
    file in the root fails "delete leaves nothing", and the root teardown names the loop."""
    if subprocess.run(["losetup", "--find"], capture_output=True).returncode != 0:
        pytest.skip("no free loop device here")
    roots = tmp_path / "roots"
    roots.mkdir()
    try:
        data = run_suite(
            tmp_path,
            LEAKY,
            "-k",
            "test_delete_leaves_nothing",
            f"--stockade-root={roots}",
        )
    finally:
        leaked = _detach_loops_under(roots)
    recs = records_by_row(data)
    loop_row = "chroot+cgroup+leaky_loop_storage"
    r = recs[(loop_row, "test_delete_leaves_nothing[loopback]")]
    assert r["outcome"] == "fail", r
    assert "delete left behind" in r["why"] and "loop /dev/loop" in r["why"] and "(deleted)" in r["why"], r
    teardown = recs[(loop_row, "host root teardown")]
    assert teardown["outcome"] == "fail" and "loop /dev/loop" in teardown["why"], teardown
    assert len(leaked) == 2, leaked  # the warm-up's and the measured instance's
    file_row = "chroot+cgroup+leaky_file_storage"
    r = recs[(file_row, "test_delete_leaves_nothing[loopback]")]
    assert r["outcome"] == "fail", r
    assert "delete left files in the host root" in r["why"], r
    assert "storage/leaky_file_storage/orphan-1" in r["why"], r  # the warm-up's orphan-0 is the baseline
    assert (file_row, "host root teardown") not in recs  # the root itself goes with its files
    assert not list(roots.iterdir()), list(roots.iterdir())


SLOPPY = suite_module(
    TestSloppy=("StorageSuite", "chroot", "cgroup", "sloppy_rollback_storage"),
)


def test_rollback_that_misses_a_mode_fails(tmp_path: Path) -> None:
    """Snapshot + rollback compares the whole tree: one file's mode not restored fails it."""
    data = run_suite(tmp_path, SLOPPY, "-k", "test_snapshot_rollback_restores_bytes")
    (rec,) = [r for r in data["records"] if r["column"] == "snapshot"]
    assert rec["outcome"] == "fail", rec
    assert "rollback did not restore the tree" in rec["why"], rec
    assert "regular file|644|0:0|/etc/group" in rec["why"], rec
    assert "regular file|600|0:0|/etc/group" in rec["why"], rec


LEAKY_BRIDGE = suite_module(
    TestNoFirewall=("IsolationSuite", "no_firewall_ns", "cgroup", "dir"),
    TestSharedNetns=("IsolationSuite", "shared_netns_bridge_ns", "cgroup", "dir"),
)


def _links(prefix: str) -> set[str]:
    net = Path("/sys/class/net")
    return {p.name for p in net.iterdir() if p.name.startswith(prefix)} if net.is_dir() else set()


def _tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in out.splitlines() if "stockade_" in line}


def test_bridge_that_leaks_fails_network_isolation(tmp_path: Path) -> None:
    """Backends declaring network isolation whose bridge mode leaks fail the network cell,
    loopback mode still passing: one with no host firewall (the host's addresses and the
    other network's instance answer from inside), one whose bridged instances share the
    host's network namespace. Both measured from inside a bridged instance."""
    if not Path("/proc/self/ns/net").exists():
        pytest.skip("no network namespaces here")
    before, tables_before = _links("stk"), _tables()
    data = run_suite(tmp_path, LEAKY_BRIDGE, "-k", "test_network_isolation")
    recs = records_by_row(data)
    for iso in ("no_firewall_ns", "shared_netns_bridge_ns"):
        row = f"{iso}+cgroup+dir"
        loop = recs[(row, "test_network_isolation[loopback]")]
        assert loop["outcome"] == "pass", loop
        bridge = recs[(row, "test_network_isolation[bridge]")]
        if bridge["outcome"] == "cannot run here":
            pytest.skip(f"no bridged network here: {bridge['why']}")
        assert bridge["outcome"] == "fail", bridge
        assert "a bridged instance reaches the host's wildcard listener at port " in bridge["why"], bridge
        assert "own gateway" in bridge["why"] and "(answered)" in bridge["why"], bridge
    why = recs[("no_firewall_ns+cgroup+dir", "test_network_isolation[bridge]")]["why"]
    assert "reaches the instance on another network" in why, why  # forwarding on, nothing dropping
    why = recs[("shared_netns_bridge_ns+cgroup+dir", "test_network_isolation[bridge]")]["why"]
    assert "is in the host's network namespace" in why and "sees interfaces other than lo" in why, why
    from stockade.testing.matrix import Matrix

    rows = {r.label: r for r in Matrix.from_results([data]).rows}
    for iso in ("no_firewall_ns", "shared_netns_bridge_ns"):
        assert rows[f"{iso}+cgroup+dir"].cells["network_isolation"].outcome == "fail"
    # nothing of the suite's networks is left: bridges, the extra host interface, tables
    assert not [k for k in recs if k[1] == "host root teardown"], recs
    assert _links("stk") <= before, _links("stk") - before
    assert _tables() <= tables_before, _tables() - tables_before


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
