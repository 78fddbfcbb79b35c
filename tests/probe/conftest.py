"""Fixtures for the in-instance probe: the built binary, host beacons, a way to run it,
and a file system with inode flags on a loop device."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from stockade.testing.probe import (
    HostBeacons,
    host_beacons,
    parse_facts,
    parse_results,
    probe_binary,
)
from stockade.testing.probe import build as probe_build

from .probe_helpers import ProbeRun, RunProbe

HERE = Path(__file__).parent
RESTRICTED = HERE / "restricted.py"


@pytest.fixture(scope="session")
def probe() -> Path:
    if probe_build._find_compiler() is None:
        pytest.skip(f"no C compiler to build the probe (Debian: {probe_build.DEBIAN_PACKAGES})")
    return probe_binary()


@pytest.fixture
def beacons() -> Iterator[HostBeacons]:
    with host_beacons() as b:
        yield b


@pytest.fixture
def run_probe(probe: Path) -> RunProbe:
    def run(
        args: Sequence[str] = (),
        *,
        prefix: Sequence[str] = (),
        program: str | None = None,
        pass_fds: Sequence[int] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> ProbeRun:
        cmd = [*prefix, program or str(probe), *args]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd="/",
            pass_fds=pass_fds,
            preexec_fn=preexec_fn,
        )
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {proc.stderr}"
        return ProbeRun(parse_results(proc.stdout), parse_facts(proc.stdout), proc.stdout, proc.stderr)

    return run


@pytest.fixture
def restricted_prefix() -> list[str]:
    return [sys.executable, str(RESTRICTED)]


# --- a file system with inode flags on a loop device --------------------------------------


@pytest.fixture
def loop_ext4() -> Iterator[Path]:
    """A small ext4 on a loop device, mounted under /tmp/stockade-test-*; removed after."""
    for tool in ("mkfs.ext4", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: e2fsprogs, mount)")
    root = Path(tempfile.mkdtemp(prefix="stockade-test-probe-"))
    image, mnt = root / "fs.img", root / "mnt"
    mnt.mkdir()
    device = None
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(16 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        subprocess.run(["mount", "-t", "ext4", device, str(mnt)], check=True, capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        if device:
            subprocess.run(["losetup", "-d", device], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
