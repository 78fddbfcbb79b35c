"""Fixtures for the linux_ns isolation tests: a busybox root (plus the host's /usr, bound
read-only where a test needs a Python inside), contexts built by hand, no quota backend."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockade.images import build_default_image
from stockade.interfaces import BackendConfig

if os.geteuid() != 0:
    pytest.skip("linux_ns isolation tests need root", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
from linux_ns_helpers import Instances
from stockade_linux_ns.isolation import LinuxNsIsolation

_probe = LinuxNsIsolation(
    BackendConfig(root=Path("/nonexistent"), run_dir=Path("/nonexistent"), host_tag="t")
).probe()
if not _probe.ok:
    pytest.skip(f"linux_ns unavailable: {_probe.reason}", allow_module_level=True)


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stockade-test-"))
    os.chmod(d, 0o711)  # traversable by a user namespace's mapped root
    try:
        yield d
    finally:
        from stockade.linux import umount_tree

        umount_tree(str(d))
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def image(base_dir: Path) -> Path:
    root = build_default_image(base_dir / "rootfs")
    # merged-/usr hosts: the host's /usr bound at /usr brings its libraries along
    for name in ("lib", "lib64"):
        if os.path.islink(f"/{name}"):
            os.symlink(f"usr/{name}", root / name)
    return root


@pytest.fixture
def backend(base_dir: Path) -> LinuxNsIsolation:
    cfg = BackendConfig(root=base_dir / "root", run_dir=base_dir / "run", host_tag="t")
    return LinuxNsIsolation(cfg)


@pytest.fixture
def instances(backend: LinuxNsIsolation, image: Path, base_dir: Path) -> Iterator[Instances]:
    inst = Instances(backend, image, base_dir)
    try:
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture(scope="session", autouse=True)
def _children_before() -> None:
    import linux_ns_helpers

    linux_ns_helpers.BASELINE |= linux_ns_helpers.live_children()
