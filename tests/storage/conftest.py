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

BACKENDS = ["dir", "overlay"]


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="storage backends need root (mounts, device nodes, trusted xattrs)"
)


def make_backend(name: str, root: Path) -> FileTreeStorage:
    config = BackendConfig(root=root, run_dir=root / "run", host_tag="t")
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


def mounts_in(path: Path) -> list[str]:
    from stockade import linux

    return linux.mounts_under(str(path))
