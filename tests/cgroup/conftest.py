"""Fixtures for the cgroup quota backend: real kernel, root, a unique host tag per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stockade.interfaces import BackendConfig, InstanceContext, RootFS
from stockade.spec import InstanceSpec

PY = sys.executable
Make = Callable[..., InstanceContext]


@pytest.fixture(scope="session")
def host_tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def test_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="stockade-test-cgroup-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _config(test_root: Path, host_tag: str, **options: Any) -> BackendConfig:
    return BackendConfig(root=test_root, run_dir=test_root / "run", host_tag=host_tag, options=options)


@pytest.fixture(scope="session")
def sweep(test_root: Path, host_tag: str) -> Iterator[None]:
    """After the session, whatever a failed test left under our tag goes (v1+v2 views)."""
    yield
    from stockade_linux_ns.cgroup.backend import CgroupQuota

    for version in ("auto", "v2"):
        CgroupQuota(_config(test_root, host_tag, cgroup_version=version)).gc({})


def _maker(backend: Any, test_root: Path) -> tuple[Make, list[InstanceContext]]:
    made: list[InstanceContext] = []

    def make(
        name: str, resources: dict[str, Any] | None = None, device: str | None = None, create: bool = True
    ) -> InstanceContext:
        spec = InstanceSpec.from_dict({"name": name, "resources": resources or {}})
        ctx = InstanceContext(
            id=uuid.uuid4().hex,
            name=name,
            spec=spec,
            config=backend.config,
            state_dir=test_root / "state" / name,
            run_dir=test_root / "run" / name,
            rootfs=RootFS(path=str(test_root), device=device),
        )
        made.append(ctx)
        if create:
            backend.create(ctx)
        return ctx

    return make, made


@pytest.fixture
def backend(test_root: Path, host_tag: str, sweep: None) -> Any:
    from stockade_linux_ns.cgroup.backend import CgroupQuota

    return CgroupQuota(_config(test_root, host_tag))


@pytest.fixture
def backend_v2(test_root: Path, host_tag: str, sweep: None) -> Any:
    """The v2 code on this host's unified mount (no controllers there: core files only)."""
    from stockade_linux_ns.cgroup.backend import CgroupQuota

    return CgroupQuota(_config(test_root, host_tag, cgroup_version="v2"))


@pytest.fixture
def make(backend: Any, test_root: Path) -> Iterator[Make]:
    fn, made = _maker(backend, test_root)
    try:
        yield fn
    finally:
        for ctx in made:
            backend.destroy(ctx)


@pytest.fixture
def make_v2(backend_v2: Any, test_root: Path) -> Iterator[Make]:
    fn, made = _maker(backend_v2, test_root)
    try:
        yield fn
    finally:
        for ctx in made:
            backend_v2.destroy(ctx)


@pytest.fixture
def spawn(request: pytest.FixtureRequest) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -c code`` as a child that attaches itself to the instance, then execs."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(backend: Any, ctx: InstanceContext, code: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [PY, "-I", "-S", "-c", code],
            # Like the isolation backend: attach in the child, before exec.
            preexec_fn=lambda: backend.attach(ctx, os.getpid()),  # noqa: PLW1509
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        procs.append(p)
        return p

    try:
        yield start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()
