"""zfs storage through the Host and the CLI (the VM tier): the parent dataset from the root's
config.toml, I/O limits refused before anything exists, the disk quota changed after create."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import discard_host
from stockade import Host
from stockade.errors import UnsupportedFeature

from .conftest import needs_zfs, zcmd, zget

pytestmark = needs_zfs


def listing(pool: str) -> list[str]:
    return sorted(
        zcmd("zfs", "list", "-H", "-p", "-o", "name,refquota", "-t", "all", "-r", pool).splitlines()
    )


def cli(*args: str) -> int:
    from stockade.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


@pytest.fixture
def zfs_host(pool: str) -> Iterator[Host]:
    root = Path(tempfile.mkdtemp(prefix="stockade-test-zfs-host-"))
    (root / "config.toml").write_text(
        f'[backends]\nstorage = "zfs"\n\n[options.zfs]\ndataset = "{pool}/stockade"\n'
    )
    host = Host(root)
    try:
        yield host
    finally:
        discard_host(host)
        shutil.rmtree(root, ignore_errors=True)


def test_io_limits_refused_before_any_dataset(zfs_host: Host, pool: str) -> None:
    before = listing(pool)
    with pytest.raises(UnsupportedFeature, match=r"io rate limits: storage 'zfs' has no block device"):
        zfs_host.create({"name": "io", "resources": {"io": {"write_bps": "1M", "read_iops": 50}}})
    assert zfs_host.instances() == []
    assert listing(pool) == before  # not even this root's layout or its image
    assert not any(f"/{zfs_host.tag}" in line for line in listing(pool))


def test_disk_quota_changes_after_create(zfs_host: Host, pool: str) -> None:
    inst = zfs_host.create({"name": "q", "resources": {"disk": "16M"}})
    assert inst.backends["storage"] == "zfs"  # from config.toml
    ds = inst.context().data["storage"]["dataset"]
    assert ds == f"{pool}/stockade/{zfs_host.tag}/instances/{inst.id}"
    assert int(zget("refquota", ds)) == 16 << 20

    inst.update({"disk": "48M"})
    assert int(zget("refquota", ds)) == 48 << 20
    assert zfs_host.get("q").spec.resources.disk == 48 << 20
    usage = inst.stats().storage
    assert usage is not None and usage.quota == 48 << 20

    # refused whole, before anything changes
    with pytest.raises(UnsupportedFeature, match="has no block device"):
        inst.update({"io": {"read_iops": 10}, "disk": "64M"})
    assert int(zget("refquota", ds)) == 48 << 20

    assert cli("--root", str(zfs_host.root), "update", "q", "--disk", "32M") == 0
    assert int(zget("refquota", ds)) == 32 << 20
    assert cli("--root", str(zfs_host.root), "update", "q", "--disk", "none") == 0
    assert zget("refquota", ds) == "0"
    assert zfs_host.get("q").spec.resources.disk is None

    inst.delete(force=True)
    assert not any(line.startswith(ds) for line in listing(pool))
