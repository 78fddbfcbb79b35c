"""The VM harness itself: scripts parse, the cache key is stable, and (opt-in, it boots a VM:
STOCKADE_VM_TESTS=1) the smoke mode passes. The VM's own tests run through tests/vm/run.sh."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SCRIPTS = ["run.sh", "prepare.sh", "smoke.sh", "lib/stage2.sh", "lib/initramfs.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script: str) -> None:
    subprocess.run(["bash", "-n", str(HERE / script)], check=True)


def test_stage1_is_busybox_sh() -> None:
    assert (HERE / "lib/init").read_text().startswith("#!/bin/busybox sh")


def test_cache_key_names_kernel_zfs_and_harness() -> None:
    proc = subprocess.run([str(HERE / "prepare.sh"), "--key"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot resolve versions here: {proc.stderr.strip()}")
    key = proc.stdout.strip()
    assert re.fullmatch(r"\S+-amd64_zfs\S+_h[0-9a-f]{12}", key), key
    again = subprocess.run([str(HERE / "prepare.sh"), "--key"], capture_output=True, text=True, check=True)
    assert again.stdout.strip() == key


@pytest.mark.skipif(
    os.environ.get("STOCKADE_VM_TESTS") != "1",
    reason="boots a VM (~25 s warm, ~6 min cold): set STOCKADE_VM_TESTS=1",
)
@pytest.mark.timeout(1200)
def test_smoke_in_the_vm() -> None:
    proc = subprocess.run([str(HERE / "run.sh"), "--smoke"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
