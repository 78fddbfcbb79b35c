"""`stockade conformance` end to end: the real command, its pytest subprocess, the matrix.

The liars of liars.py reach the command the way a third party's backend does: through an
entry point of the ``stockade`` group (a dist-info on PYTHONPATH), so the command and the
pytest it runs both find them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
STOCKADE = Path(sys.executable).with_name("stockade")
COMBINATION = ["--isolation", "lying_chroot", "--quota", "lying_quota", "--storage", "dir"]
ROW = "lying_chroot+lying_quota+dir"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the conformance suite runs instances: needs root")

PLUGIN = '''"""The liars as an installed plugin (entry point group ``stockade``)."""
from liars import LyingChroot, LyingQuota
from stockade.plugins import hookimpl


@hookimpl
def stockade_register_backends(registry):
    registry.add(LyingQuota)
    registry.add(LyingChroot)
'''


@pytest.fixture(scope="module")
def cli_env() -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose Python finds the liars' entry point, and a --root under /tmp."""
    root = Path(tempfile.mkdtemp(prefix="stockade-test-cli-"))
    site = root / "site"
    info = site / "stockade_test_liars-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: stockade-test-liars\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[stockade]\nliars = stockade_test_liars\n")
    (site / "stockade_test_liars.py").write_text(PLUGIN)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])
    hosts = root / "hosts"
    hosts.mkdir()
    try:
        yield env, hosts
    finally:
        from stockade.linux import umount_tree

        umount_tree(str(root))
        shutil.rmtree(root, ignore_errors=True)


def conformance(cli_env: tuple[dict[str, str], Path], *args: str) -> subprocess.CompletedProcess[str]:
    env, hosts = cli_env
    assert STOCKADE.exists(), STOCKADE
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(STOCKADE), "--root", str(hosts), "conformance", *COMBINATION, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(f"stockade conformance {' '.join(args)}: exit {proc.returncode} in {time.monotonic() - t0:.1f} s")
    # every host root the suite made under --root is gone again
    assert not [p for p in hosts.iterdir() if p.name.startswith("stockade-test-")], list(hosts.iterdir())
    return proc


def test_conformance_json(cli_env: tuple[dict[str, str], Path]) -> None:
    proc = conformance(cli_env, "--report", "json")
    assert proc.returncode == 1, proc.stderr[-2000:]  # a declared feature failed
    matrix: dict[str, Any] = json.loads(proc.stdout)
    assert matrix["command"] == "stockade conformance " + " ".join(COMBINATION) + " --report json"
    (row,) = matrix["rows"]
    assert row["label"] == ROW
    assert row["backends"]["isolation"]["name"] == "lying_chroot"
    cells = row["cells"]
    # declared and held
    assert cells["fs_isolation"]["outcome"] == "pass", cells["fs_isolation"]
    assert cells["lifecycle"]["outcome"] == "pass", cells["lifecycle"]
    # declared and not held: fail, with the reason
    for col in ("memory_limit", "pids_limit", "restriction.host_processes", "restriction.mount"):
        assert cells[col]["outcome"] == "fail", (col, cells[col])
        assert cells[col]["why"], (col, cells[col])
    assert any("not enforced" in w for w in cells["memory_limit"]["why"]), cells["memory_limit"]
    # not declared
    for col in ("cpu_quota", "network_isolation", "restriction.ptrace", "checkpoint"):
        assert cells[col]["outcome"] == "not supported", (col, cells[col])
    assert f"{ROW}: running the conformance suite" in proc.stderr


def test_conformance_markdown_to_a_file(cli_env: tuple[dict[str, str], Path], tmp_path: Path) -> None:
    out = tmp_path / "matrix.md"
    proc = conformance(cli_env, "--report", "md", "--output", str(out))
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stdout == ""
    assert f"matrix written to {out}" in proc.stderr
    md = out.read_text()
    assert "Generated with `stockade conformance " in md
    tables = [line for line in md.splitlines() if line.startswith("| ")]
    headers = [[c.strip() for c in line.strip("|").split("|")] for line in tables if "backends" in line]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in tables if ROW in line]
    assert len(headers) == 2 and len(rows) == 2, md  # the features table and the restrictions table
    cells = {}
    for header, row in zip(headers, rows, strict=True):
        cells.update(dict(zip(header[1:], row[1:], strict=True)))
    assert cells["file-system isolation"] == "pass"
    assert cells["memory limit"].startswith("**FAIL** ["), cells
    assert cells["pids limit"].startswith("**FAIL** ["), cells
    assert cells["mount"].startswith("**FAIL** ["), cells
    assert cells["CPU quota"] == "not supported"
    assert cells["ptrace"] == "not supported"
    assert "### Notes" in md and "not enforced" in md


def test_conformance_a_subset_of_columns(cli_env: tuple[dict[str, str], Path]) -> None:
    """What a backend author iterating on one feature runs: only those columns' tests."""
    t0 = time.monotonic()
    proc = conformance(cli_env, "--column", "memory_limit", "--column", "mount", "--report", "json")
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    (row,) = json.loads(proc.stdout)["rows"]
    cells = row["cells"]
    assert {c for c in cells if c != "lifecycle"} == {"memory_limit", "restriction.mount"}, cells
    assert cells["memory_limit"]["outcome"] == "fail" and cells["restriction.mount"]["outcome"] == "fail"
    assert json.loads(proc.stdout)["command"].endswith("--column memory_limit --column mount --report json")
    print(f"two columns: {took:.1f} s")
    bad = conformance(cli_env, "--column", "nope")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and "--column 'nope'" in bad.stderr, bad.stderr
