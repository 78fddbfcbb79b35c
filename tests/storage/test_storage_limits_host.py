"""Storage limits through the Host and the CLI: a disk quota changed after create (API and
``stockade update --disk``), a root's backend options from ``<root>/config.toml``, and I/O
limits refused up front, at create and at update, on storage that has no block device."""

from __future__ import annotations

import glob
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import discard_host, fill
from stockade import Host
from stockade.errors import SpecError, StockadeError, UnsupportedFeature

from .conftest import mounts_in, needs_root

pytestmark = needs_root
MIB = 1 << 20
QUOTA_CONFIG = """
[backends]
storage = "overlay"

[options.overlay]
quota_fs = "btrfs"
quota_fs_size = "1G"
"""


def cgroups_of(tag: str) -> list[str]:
    """Every cgroup directory of one host root (``.../stockade/<tag>``), in any hierarchy."""
    found: list[str] = []
    for pattern in ("/sys/fs/cgroup/stockade/", "/sys/fs/cgroup/*/stockade/", "/sys/fs/cgroup/**/stockade/"):
        found += glob.glob(f"{pattern}{tag}", recursive=True)
    return sorted(set(found))


@pytest.fixture
def quota_host(root: Path) -> Iterator[Host]:
    (root / "host").mkdir()
    (root / "host" / "config.toml").write_text(QUOTA_CONFIG)
    host = Host(root / "host")
    try:
        yield host
    finally:
        discard_host(host)
        assert cgroups_of(host.tag) == []


def test_root_config_chooses_backend_and_options(quota_host: Host) -> None:
    inst = quota_host.create({"name": "cfg", "resources": {"disk": "32M"}})
    assert inst.backends["storage"] == "overlay"
    usage = inst.stats().storage
    assert usage is not None and usage.quota == 32 * MIB  # quota mode: the config's option
    # the caller's arguments win over the file, key by key
    h = Host(quota_host.root, options={"overlay": {"quota_fs_size": "2G"}})
    assert h.options["overlay"] == {"quota_fs": "btrfs", "quota_fs_size": "2G"}
    assert h.defaults["storage"] == "overlay"
    h.close()


def test_root_config_errors_are_one_line(root: Path) -> None:
    (root / "config.toml").write_text('[backends]\nstorage = "overlay"\nnetwork = "x"\n[wat]\n')
    with pytest.raises(StockadeError, match=r"config.toml: invalid or unknown: wat; backends") as e:
        Host(root)
    assert "\n" not in str(e.value)
    (root / "config.toml").write_text("[options\n")
    with pytest.raises(StockadeError, match="not valid TOML"):
        Host(root)


def test_disk_quota_changes_after_create(quota_host: Host) -> None:
    inst = quota_host.create({"name": "grow", "resources": {"disk": "24M"}})
    merged = Path(inst.context().rootfs.path)  # type: ignore[union-attr]
    written, err = fill(merged / "a", 40 * MIB)
    assert err is not None and written < 26 * MIB, (written, err)  # the kernel stops it
    (merged / "a").unlink()

    inst.update({"disk": "64M"})
    usage = inst.stats().storage
    assert usage is not None and usage.quota == 64 * MIB
    assert quota_host.get("grow").spec.resources.disk == 64 * MIB  # recorded
    written, err = fill(merged / "b", 40 * MIB)
    assert err is None and written == 40 * MIB  # now it fits

    inst.update({"disk": None})
    usage = inst.stats().storage
    assert usage is not None and usage.quota is None
    assert quota_host.get("grow").spec.resources.disk is None


def cli(*args: str) -> int:
    from stockade.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


def test_cli_update_disk(quota_host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """A plain ``stockade --root R update`` finds the quota mode through the root's config."""
    quota_host.create({"name": "cli", "resources": {"disk": "24M"}})
    root = str(quota_host.root)
    assert cli("--root", root, "update", "cli", "--disk", "48M") == 0
    usage = quota_host.get("cli").stats().storage
    assert usage is not None and usage.quota == 48 * MIB
    assert cli("--root", root, "update", "cli", "--disk", "none") == 0
    usage = quota_host.get("cli").stats().storage
    assert usage is not None and usage.quota is None
    assert cli("--root", root, "update", "cli", "--disk", "12XB") != 0
    assert "resources.disk" in capsys.readouterr().err


@pytest.mark.parametrize("storage", ["dir", "overlay"])
def test_io_limits_refused_up_front_and_nothing_made(root: Path, image_src: Path, storage: str) -> None:
    """dir and plain overlay have no block device: refused before any state, storage,
    mount or cgroup exists, with the reason in one line."""
    with Host(root / "host", storage=storage) as host:
        host.import_image("default", image_src)
        storage_dir = root / "host" / "storage"
        before = sorted(p.name for p in storage_dir.rglob("*")) if storage_dir.exists() else []
        with pytest.raises(
            UnsupportedFeature, match=rf"io rate limits: storage '{storage}' has no block device"
        ):
            host.create({"name": "io", "resources": {"io": {"read_iops": 100, "write_bps": "1M"}}})
        assert host.instances() == []
        assert not (host.store.dir("io")).exists()
        after = sorted(p.name for p in storage_dir.rglob("*")) if storage_dir.exists() else []
        assert after == before
        assert mounts_in(root) == []
        assert cgroups_of(host.tag) == []


@pytest.mark.parametrize("storage", ["dir", "overlay"])
def test_delegated_dataset_refused_up_front_where_nothing_can_hand_one_over(
    root: Path, image_src: Path, storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Host(root / "host", storage=storage) as host:
        host.import_image("default", image_src)
        with pytest.raises(UnsupportedFeature) as e:
            host.create({"name": "dd", "delegate_dataset": True, "allow": ["mount"]})
        assert str(e.value).count("delegate_dataset:") == 2
        assert f"storage backend '{storage}' does not support it" in str(e.value)
        assert "isolation backend 'linux_ns' does not support it" in str(e.value)
        assert host.instances() == [] and not host.store.dir("dd").exists()
        assert mounts_in(root) == [] and cgroups_of(host.tag) == []
        capsys.readouterr()
        assert (
            cli(
                "--root",
                str(host.root),
                "create",
                "dd",
                "--delegate-dataset",
                "--allow",
                "mount",
                "--",
                "true",
            )
            != 0
        )
        err = capsys.readouterr().err
        assert "delegate_dataset" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("storage", ["dir", "overlay"])
def test_update_refuses_what_the_storage_cannot_do(
    root: Path, storage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Host(root / "host", storage=storage) as host:
        inst = host.create({"name": "u", "resources": {"memory": "64M"}})
        try:
            with pytest.raises(UnsupportedFeature, match=rf"storage '{storage}' has no block device"):
                inst.update({"io": {"write_bps": "1M"}, "memory": "32M"})
            capsys.readouterr()
            assert (
                cli("--root", str(host.root), "update", "u", "--io-write-bps", "1M", "--memory", "32M") != 0
            )
            assert f"io rate limits: storage '{storage}' has no block device" in capsys.readouterr().err
            with pytest.raises(UnsupportedFeature, match=rf"disk quota: storage backend '{storage}'"):
                inst.update({"disk": "64M", "memory": "32M"})
            # refused whole: not even the memory part was applied or recorded
            again = host.get("u")
            assert again.spec.resources.memory == 64 * MIB
            assert again.spec.resources.disk is None and not again.spec.resources.io.any()
            assert again.stats().quota.memory_limit == 64 * MIB
        finally:
            inst.delete(force=True)
        assert cgroups_of(host.tag) == []


def test_update_refuses_to_drop_a_limit_the_kernel_would_keep(root: Path) -> None:
    with Host(root / "host", storage="dir") as host:
        inst = host.create({"name": "d", "resources": {"memory": "64M", "pids": 50}})
        try:
            with pytest.raises(SpecError, match=r"resources\.memory: a limit cannot be removed") as e:
                inst.update({"memory": None, "pids": 60})
            assert [p for p, _ in e.value.problems] == ["resources.memory"]
            again = host.get("d")
            assert (again.spec.resources.memory, again.spec.resources.pids) == (64 * MIB, 50)
            assert again.stats().quota.memory_limit == 64 * MIB
            inst.update({"memory": "128M"})  # raising it is how to loosen a limit
            assert host.get("d").stats().quota.memory_limit == 128 * MIB
        finally:
            inst.delete(force=True)
        assert cgroups_of(host.tag) == []
