"""Fixtures for the ZFS backend: a throwaway file-backed pool, its parent dataset, the
default image imported once, and instance contexts.

Tests that need ZFS use the ``zfs_backend`` or ``pool`` fixtures and skip on a host
without the module (this machine's kernel has none): run them with
``tests/vm/run.sh --zfs -- pytest tests/zfs``. The pool lives on a sparse file under a
``/tmp/stockade-test-zfs-*`` directory and is destroyed at the end even when tests fail.
Setup and independent checks use the ``zpool``/``zfs`` commands; the backend never does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stockade.images import build_default_image
from stockade.interfaces import BackendConfig, InstanceContext
from stockade.spec import InstanceSpec

NO_ZFS = "no ZFS kernel module: run tests/vm/run.sh --zfs"


def zfs_available() -> bool:
    return os.path.exists("/dev/zfs") and os.path.isdir("/sys/module/zfs")


needs_zfs = pytest.mark.skipif(not zfs_available() or os.geteuid() != 0, reason=NO_ZFS)


def zcmd(*args: str) -> str:
    """Run a zfs/zpool command (test setup and independent checks only)."""
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def zget(prop: str, name: str) -> str:
    return zcmd("zfs", "get", "-Hp", "-o", "value", prop, name).strip()


@pytest.fixture(scope="session")
def pool() -> Iterator[str]:
    if not zfs_available() or os.geteuid() != 0:
        pytest.skip(NO_ZFS)
    d = Path(tempfile.mkdtemp(prefix="stockade-test-zfs-"))
    name = f"stktest{uuid.uuid4().hex[:6]}"
    vdev = d / "pool.img"
    with open(vdev, "wb") as f:
        f.truncate(1 << 30)
    created = False
    try:
        zcmd(
            "zpool",
            "create",
            "-o",
            "cachefile=none",
            "-O",
            "mountpoint=none",
            "-O",
            "canmount=off",
            "-O",
            "compression=off",
            name,
            str(vdev),
        )
        created = True
        zcmd("zfs", "create", f"{name}/stockade")
        yield name
    finally:
        if created:
            subprocess.run(["zpool", "destroy", "-f", name], check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def image_src() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="stockade-test-zfs-img-"))
    try:
        src = build_default_image(tmp / "default")
        (src / "data").mkdir()
        (src / "data/hello.txt").write_text("from the image\n")
        yield src
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def host_root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stockade-test-zfs-root-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_backend(pool: str, root: Path, tag: str) -> object:
    from stockade_zfs.storage import ZfsStorage

    config = BackendConfig(
        root=root, run_dir=root / "run", host_tag=tag, options={"dataset": f"{pool}/stockade"}
    )
    return ZfsStorage(config)


@pytest.fixture(scope="session")
def zfs_backend(pool: str, host_root: Path, image_src: Path) -> Iterator[object]:
    """One backend for the session, with the default image imported (that is a test too)."""
    from stockade_zfs.storage import ZfsStorage

    b = make_backend(pool, host_root, "t1")
    assert isinstance(b, ZfsStorage)
    assert b.probe().ok, b.probe().reason
    b.import_image("default", image_src)
    yield b


@pytest.fixture
def make_ctx(zfs_backend: object) -> Iterator[Callable[..., InstanceContext]]:
    """Make instance contexts; whatever they provisioned is released after the test."""
    from stockade_zfs.storage import ZfsStorage

    assert isinstance(zfs_backend, ZfsStorage)
    made: list[InstanceContext] = []

    def make(name: str | None = None, **spec: object) -> InstanceContext:
        iid = uuid.uuid4().hex[:12]
        name = name or f"i{iid[:6]}"
        root = Path(zfs_backend.config.root)
        ctx = InstanceContext(
            id=iid,
            name=name,
            spec=InstanceSpec.from_dict({"name": name, **spec}),
            config=zfs_backend.config,
            state_dir=root / "state" / iid,
            run_dir=Path(zfs_backend.config.run_dir) / iid,
        )
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        try:
            zfs_backend.release(ctx)
        except Exception as e:  # keep releasing the others; the leak tests catch what stays
            print(f"release of {ctx.name} failed: {e}")
