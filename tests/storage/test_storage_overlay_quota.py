"""The overlay backend's quota mode (quota_fs = "btrfs"): a disk quota the kernel enforces,
usage, live changes, I/O limits on its loop device, and nothing left after release and gc."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from stockade.builtin.dir_storage import FileTreeStorage
from stockade.errors import StorageError, UnsupportedFeature
from stockade.features import Feature
from stockade.interfaces import BackendConfig
from stockade.spec import InstanceSpec

from .conftest import loops_under, make_backend, make_ctx, mounts_in, needs_root

if TYPE_CHECKING:
    from stockade_overlay.quota import QuotaOverlayStorage

pytestmark = needs_root
MIB = 1 << 20


@pytest.fixture
def qfs(root: Path, image_src: Path) -> QuotaOverlayStorage:
    from stockade_overlay.quota import QuotaOverlayStorage

    b = make_backend("overlay-btrfs", root)
    assert isinstance(b, QuotaOverlayStorage)
    b.import_image("default", image_src)
    return b


def with_resources(backend: FileTreeStorage, name: str, **resources: Any) -> Any:
    ctx = make_ctx(backend, name)
    ctx.spec = InstanceSpec.from_dict({"name": name, "image": "default", "resources": resources})
    return ctx


def fill(path: Path, count_mib: int, append: bool = False) -> tuple[int, str]:
    """Write zeros from another process until done or refused: (bytes the file holds, dd's error)."""
    flags = ["oflag=append", "conv=notrunc,fsync"] if append else ["conv=fsync"]
    r = subprocess.run(
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count_mib}", *flags],
        capture_output=True,
        text=True,
    )
    return (path.stat().st_size if path.exists() else 0), r.stderr


def test_mode_is_chosen_by_option(root: Path) -> None:
    from stockade_overlay.backend import OverlayStorage
    from stockade_overlay.quota import QuotaOverlayStorage

    plain = make_backend("overlay", root)
    quota = make_backend("overlay-btrfs", root / "q")
    assert type(plain) is OverlayStorage and type(quota) is QuotaOverlayStorage
    assert Feature.DISK_QUOTA not in plain.features and plain.semantics.io_limit_on == "none"
    assert Feature.DISK_QUOTA in quota.features
    assert quota.semantics.io_limit_on == "block_device" and quota.semantics.quota_scope == "exclusive"
    config = BackendConfig(root=root, run_dir=root / "run", host_tag="t", options={"quota_fs": "xfs"})
    with pytest.raises(StorageError, match="CONFIG_XFS_QUOTA"):
        OverlayStorage(config)


def test_plain_mode_refuses_disk_and_io_up_front(root: Path) -> None:
    plain = make_backend("overlay", root)
    spec = InstanceSpec.from_dict({"name": "q", "resources": {"disk": "64M", "io": {"write_bps": "1M"}}})
    problems = plain.check(spec)
    assert any(p.startswith("resources.disk:") and "quota_fs" in p for p in problems), problems
    assert any(p.startswith("resources.io:") and "no block device" in p for p in problems), problems

    from stockade import Host

    with Host(root / "host", storage="overlay") as host:
        with pytest.raises(
            UnsupportedFeature, match=r"io rate limits: storage 'overlay' has no block device"
        ):
            host.create({"name": "io", "resources": {"io": {"write_bps": "1M"}}})
        assert host.instances() == []
    assert not (root / "host" / "storage").exists()  # refused before anything was made


def test_quota_mode_refuses_a_root_with_plain_storage(root: Path, image_src: Path) -> None:
    make_backend("overlay", root).import_image("default", image_src)
    config = BackendConfig(root=root, run_dir=root / "run", host_tag="t", options={"quota_fs": "btrfs"})
    from stockade_overlay.backend import OverlayStorage

    p = OverlayStorage(config).probe()
    assert not p.ok and "without quota_fs" in p.reason


def test_quota_enforced_near_size_and_usage(qfs: QuotaOverlayStorage) -> None:
    quota = 32 * MIB
    ctx = with_resources(qfs, "q1", disk=quota)
    rootfs = qfs.provision(ctx)
    try:
        assert rootfs.device is not None and re.fullmatch(r"7:\d+", rootfs.device)
        assert ctx.bag("storage")["quota"] == quota
        written, err = fill(Path(rootfs.path, "fill"), 2 * quota // MIB)
        assert "Disk quota exceeded" in err or "No space left" in err, err
        assert quota - 4 * MIB <= written <= quota + MIB, f"stopped at {written / MIB:.1f} MiB"
        u = qfs.usage(ctx)
        assert u.quota == quota
        assert written <= u.used <= quota + MIB
        assert u.available is not None and u.available <= quota - u.used + MIB
    finally:
        qfs.release(ctx)


def test_quota_change_live(qfs: QuotaOverlayStorage) -> None:
    ctx = with_resources(qfs, "q2", disk=16 * MIB)
    rootfs = Path(qfs.provision(ctx).path)
    try:
        first, err = fill(rootfs / "fill", 64)
        assert first < 17 * MIB and err
        qfs.set_quota(ctx, 48 * MIB)
        assert qfs.usage(ctx).quota == 48 * MIB and ctx.bag("storage")["quota"] == 48 * MIB
        total, err = fill(rootfs / "fill", 64, append=True)
        assert "quota exceeded" in err or "No space" in err, err
        assert 44 * MIB <= total <= 49 * MIB, f"stopped at {total / MIB:.1f} MiB"
        qfs.set_quota(ctx, 8 * MIB)  # below what is used: nothing goes, nothing more comes
        size, err = fill(rootfs / "more", 1)
        assert size == 0 and "quota exceeded" in err, err
        assert (rootfs / "fill").stat().st_size == total
        qfs.set_quota(ctx, None)
        assert qfs.usage(ctx).quota is None
        assert fill(rootfs / "more", 4)[0] == 4 * MIB
        assert qfs._load(ctx)["quota"] is None  # persisted
    finally:
        qfs.release(ctx)


def test_copy_up_of_a_big_image_file_is_a_free_reflink(qfs: QuotaOverlayStorage, tmp_path: Path) -> None:
    src = tmp_path / "big"
    src.mkdir()
    with open(src / "blob", "wb") as f:
        f.truncate(0)
        f.write(b"\1" * (64 * MIB))
    qfs.import_image("big", src)
    ctx = make_ctx(qfs, "q3", image="big")
    ctx.spec = InstanceSpec.from_dict({"name": "q3", "image": "big", "resources": {"disk": "16M"}})
    rootfs = Path(qfs.provision(ctx).path)
    try:
        t = time.perf_counter()
        with open(rootfs / "blob", "r+b") as f:  # copy-up of 64 MiB under a 16 MiB quota
            f.write(b"x")
        took = time.perf_counter() - t
        assert qfs.usage(ctx).used < 4 * MIB  # shared with the image: not this instance's
        assert took < 1.0, f"copy-up took {took:.3f} s: not a reflink?"
    finally:
        qfs.release(ctx)


def _dd_seconds(text: str) -> float:
    m = re.search(r"copied, ([\d.]+) s", text)
    assert m, text
    return float(m.group(1))


@pytest.fixture
def cgroup_quota(root: Path) -> Iterator[Any]:
    from stockade_linux_ns.cgroup.backend import CgroupQuota

    config = BackendConfig(root=root, run_dir=root / "run", host_tag=f"t{uuid.uuid4().hex[:10]}")
    backend = CgroupQuota(config)
    if not backend.probe().ok:
        pytest.skip(f"cgroup quota unavailable: {backend.probe().reason}")
    try:
        yield backend
    finally:
        backend.gc({})


def test_io_limits_hold_on_the_loop_device(qfs: QuotaOverlayStorage, cgroup_quota: Any) -> None:
    rate, count = 8 * MIB, 8
    expected = count * MIB / rate
    ctx = with_resources(qfs, "io1", io={"write_bps": rate, "read_bps": rate})
    rootfs = qfs.provision(ctx)
    ctx.rootfs = rootfs
    target = Path(rootfs.path, "io.bin")
    try:
        backing = Path(f"/sys/dev/block/{rootfs.device}/loop/backing_file").read_text().strip()
        assert backing == str(qfs.fs.image)
        control = _dd_seconds(
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={count}", "oflag=direct"],
                capture_output=True,
                text=True,
            ).stderr
        )
        if control > expected / 2:
            pytest.skip(f"the disk is too slow to tell: {count} MiB unlimited took {control:.2f} s")
        cgroup_quota.create(ctx)
        try:
            took = {}
            for what, args in (
                ("write", ["if=/dev/zero", f"of={target}", "oflag=direct"]),
                ("read", [f"if={target}", "of=/dev/null", "iflag=direct"]),
            ):
                r = subprocess.run(
                    ["dd", *args, "bs=1M", f"count={count}"],
                    preexec_fn=lambda: cgroup_quota.attach(ctx, os.getpid()),
                    capture_output=True,
                    text=True,
                )
                took[what] = _dd_seconds(r.stderr)
            stats = cgroup_quota.stats(ctx)
        finally:
            cgroup_quota.destroy(ctx)
        print(f"io limits {rate // MIB} MiB/s on {rootfs.device}: {took}, unlimited write {control:.3f} s")
        for what, seconds in took.items():
            assert expected * 0.7 <= seconds <= expected * 3, (
                f"{what} of {count} MiB at {rate // MIB} MiB/s took {seconds:.2f} s "
                f"(expected ~{expected:.1f})"
            )
        # The kernel's own count: the throttled bytes went through this cgroup on the loop device.
        assert stats.io_write_bytes is not None and stats.io_write_bytes >= count * MIB
        assert stats.io_read_bytes is not None and stats.io_read_bytes >= count * MIB
    finally:
        qfs.release(ctx)


def test_release_and_gc_after_a_crash_leave_nothing(qfs: QuotaOverlayStorage, root: Path) -> None:
    image = qfs.fs.image
    kept = with_resources(qfs, "kept", disk=8 * MIB)
    qfs.provision(kept)
    qfs.snapshot(kept, "s1")
    # Another process provisions and dies by SIGKILL before anyone records the instance.
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, signal
                from pathlib import Path
                from stockade.interfaces import BackendConfig, InstanceContext
                from stockade.spec import InstanceSpec
                from stockade_overlay.backend import OverlayStorage
                root = Path({str(root)!r})
                b = OverlayStorage(BackendConfig(root=root, run_dir=root / "run", host_tag="t",
                                                 options={{"quota_fs": "btrfs"}}))
                spec = InstanceSpec.from_dict({{"name": "dead", "resources": {{"disk": "8M"}}}})
                ctx = InstanceContext(id="deadbeef", name="dead", spec=spec, config=b.config,
                                      state_dir=root / "s", run_dir=root / "r")
                rootfs = b.provision(ctx)
                open(os.path.join(rootfs.path, "x"), "w").write("x")
                os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
        ],
        capture_output=True,
        text=True,
    )
    assert child.returncode == -9, child.stderr
    assert len(mounts_in(qfs.instances_dir)) == 2  # both overlays are there
    qfs.release(kept)
    assert not qfs.instance_dir(kept).exists()
    gone = qfs.gc({})
    assert any("deadbeef" in line for line in gone), gone
    assert any("unmounted" in line for line in gone), gone
    assert mounts_in(root) == []
    assert loops_under(root) == []
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    assert str(image) not in out, out
    # gc again: nothing to do, nothing remounted
    assert qfs.gc({}) == [] and mounts_in(root) == []
    # and the storage comes back on demand
    assert qfs.list_images() == ["default"]
