"""Fixtures for the storage backends: a throwaway host root, the default image, contexts."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockade.builtin.dir_storage import FileTreeStorage, remove_tree
from stockade.images import build_default_image
from stockade.interfaces import BackendConfig, InstanceContext
from stockade.spec import InstanceSpec

BACKENDS = ["dir", "overlay", "overlay-btrfs"]
QUOTA_FS_SIZE = "1G"  # sparse: costs what is written


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="storage backends need root (mounts, device nodes, trusted xattrs)"
)


def make_backend(name: str, root: Path) -> FileTreeStorage:
    options = {"quota_fs": "btrfs", "quota_fs_size": QUOTA_FS_SIZE} if name == "overlay-btrfs" else {}
    config = BackendConfig(root=root, run_dir=root / "run", host_tag="t", options=options)
    if name == "dir":
        from stockade.builtin.dir_storage import DirStorage

        return DirStorage(config)
    from stockade_overlay.backend import OverlayStorage

    backend = OverlayStorage(config)
    probe = backend.probe()
    if not probe.ok:
        pytest.skip(f"overlay storage unavailable: {probe.reason}")
    return backend


@pytest.fixture
def root() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stockade-test-storage-"))
    try:
        yield path
    finally:
        remove_tree(path)  # unmounts whatever a failed test left mounted first
        left = loops_under(path)
        assert not left, f"loop devices left bound to files under {path}: {left}"


@pytest.fixture(scope="session")
def image_src() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-test-storage-img-"))
    try:
        src = build_default_image(tmp / "default")
        # a few things the rollback tests delete, replace and change
        (src / "data/keep").mkdir(parents=True)
        (src / "data/keep/a.txt").write_text("from the image\n")
        (src / "data/doomed").mkdir()
        (src / "data/doomed/old.txt").write_text("old dir contents\n")
        (src / "data/replaced").mkdir()
        (src / "data/replaced/lower-only.txt").write_text("must not show through\n")
        (src / "data/gone.txt").write_text("deleted later\n")
        (src / "data/mode.txt").write_text("mode changes\n")
        os.chmod(src / "data/mode.txt", 0o644)
        os.symlink("keep/a.txt", src / "data/link")
        yield src
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, root: Path, image_src: Path) -> FileTreeStorage:
    b = make_backend(request.param, root)
    b.import_image("default", image_src)
    return b


def make_ctx(backend: FileTreeStorage, name: str, image: str = "default") -> InstanceContext:
    root = Path(backend.config.root)
    iid = uuid.uuid4().hex[:16]
    return InstanceContext(
        id=iid,
        name=name,
        spec=InstanceSpec(name=name, image=image),
        config=backend.config,
        state_dir=root / "state" / iid,
        run_dir=root / "run" / iid,
    )


def loops_under(path: Path, timeout: float = 2.0) -> list[str]:
    """Loop devices whose backing file is under ``path`` (autoclear may take a moment)."""
    import time

    from stockade_overlay import loopdev

    deadline = time.monotonic() + timeout
    while True:
        left = [f"{lo.path} ({lo.backing})" for lo in loopdev.bound() if lo.backing.startswith(f"{path}/")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def mounts_in(path: Path) -> list[str]:
    from stockade import linux

    return linux.mounts_under(str(path))
