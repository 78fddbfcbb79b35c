"""Mount plans as nmount iovecs: devfs with its ruleset, nullfs binds, read-only honoured."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockade.errors import IsolationError
from stockade_freebsd_jail._ffi import MNT_RDONLY
from stockade_freebsd_jail.iovec import build_iovec, read_iovec
from stockade_freebsd_jail.mounts import make_mountpoint, plan_mounts
from stockade_freebsd_jail.zfs_delegation import merge_params, plan_delegation

from .conftest import make_spec


@pytest.fixture
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stockade-test-fbsd-") as d:
        yield Path(d)


def test_mount_plan_golden() -> None:
    spec = make_spec(
        mounts=[
            {"target": "/data", "source": "/srv/data", "readonly": True},
            {"target": "/scratch", "type": "tmpfs", "options": ["size=64m", "noexec", "ro"]},
        ]
    )
    plan = plan_mounts(spec, "/var/lib/stockade/r/web", "/run/stockade/web", 4)
    assert plan.jail_path == "/var/lib/stockade/r/web"
    assert plan.mountpoints == ("/dev", "/data", "/scratch")
    devfs, data, scratch = plan.steps
    assert devfs.params() == [
        ("fstype", "devfs"),
        ("fspath", "/var/lib/stockade/r/web/dev"),
        ("from", "devfs"),
        ("ruleset", "4"),
    ]
    assert devfs.flags == 0
    assert data.params() == [
        ("fstype", "nullfs"),
        ("fspath", "/var/lib/stockade/r/web/data"),
        ("target", "/srv/data"),
    ]
    assert data.flags == MNT_RDONLY
    assert scratch.params() == [
        ("fstype", "tmpfs"),
        ("fspath", "/var/lib/stockade/r/web/scratch"),
        ("from", "tmpfs"),
        ("size", "64m"),
        ("noexec", True),
    ]
    assert scratch.flags == 0  # 'ro' in options is ignored: readonly is the spec's field
    assert read_iovec(build_iovec(data.params())) == [
        (b"fstype\0", b"nullfs\0"),
        (b"fspath\0", b"/var/lib/stockade/r/web/data\0"),
        (b"target\0", b"/srv/data\0"),
        (b"errmsg\0", bytes(1024)),
    ]


def test_readonly_root_is_a_readonly_nullfs_view() -> None:
    plan = plan_mounts(make_spec(readonly_rootfs=True), "/r/web", "/run/stockade/web", 5)
    first = plan.steps[0]
    assert plan.jail_path == "/run/stockade/web/root"
    assert first.params() == [
        ("fstype", "nullfs"),
        ("fspath", "/run/stockade/web/root"),
        ("target", "/r/web"),
    ]
    assert first.flags == MNT_RDONLY
    assert plan.steps[1].fspath == "/run/stockade/web/root/dev"
    assert plan.steps[1].params()[-1] == ("ruleset", "5")


def test_make_mountpoint_creates_and_refuses_symlinks(root: Path) -> None:
    assert make_mountpoint(str(root), "/a/b") == f"{root}/a/b"
    assert (root / "a" / "b").is_dir()
    os.symlink("/etc", root / "evil")
    with pytest.raises(IsolationError, match="symlink"):
        make_mountpoint(str(root), "/evil/x")
    (root / "file").write_text("")
    with pytest.raises(IsolationError, match="not a directory"):
        make_mountpoint(str(root), "/file/x")


def test_zfs_delegation_plan() -> None:
    d = plan_delegation("tank/stockade/web/data", "stockade-t1-web")
    assert [s.argv for s in d.before_create] == [("zfs", "set", "jailed=on", "tank/stockade/web/data")]
    assert [s.argv for s in d.after_create] == [("zfs", "jail", "stockade-t1-web", "tank/stockade/web/data")]
    assert [s.argv for s in d.teardown] == [("zfs", "unjail", "stockade-t1-web", "tank/stockade/web/data")]
    merged = merge_params([("enforce_statfs", 2), ("allow.mount", False)], d.params)
    assert merged == [("enforce_statfs", 1), ("allow.mount", True), ("allow.mount.zfs", True)]
