"""ZfsStorage against a real file-backed pool (the VM tier: tests/vm/run.sh --zfs).

Each check is made independently of the backend where it can be: mounts from
/proc/self/mountinfo, properties from the ``zfs`` command, contents byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from _helpers import fill
from stockade.errors import (
    AlreadyExists,
    ImageNotFound,
    NotFound,
    QuotaExceeded,
    StateConflict,
    StockadeError,
)
from stockade.interfaces import InstanceContext

from .conftest import make_backend, needs_zfs, zcmd, zget

pytestmark = needs_zfs
MakeCtx = Callable[..., InstanceContext]


def mounted_at(path: str) -> str | None:
    """The source of the mount at ``path`` if it is a zfs mount, from mountinfo."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[4] == path and fields[sep + 1] == "zfs":
                return fields[sep + 2]
    return None


def tree_digest(root: str) -> str:
    """Names, types, modes, owners, link targets and contents of a tree, in one hash."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, root)}|{st.st_mode:o}|{st.st_uid}|{st.st_gid}|".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def txg_sync(ctx: InstanceContext) -> None:
    """Wait for the pool's transaction group: space accounting lags writes by up to 5 s."""
    zcmd("zpool", "sync", ctx.config.options["dataset"].split("/")[0])


# --- images ---------------------------------------------------------------------------------


def test_image_is_a_dataset_with_a_base_snapshot(zfs_backend, image_src: Path) -> None:
    assert zfs_backend.list_images() == ["default"]
    assert zfs_backend.has_image("default") and not zfs_backend.has_image("nope")
    ds = f"{zfs_backend.images_ds}/default"
    snaps = zcmd("zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", ds).split()
    assert snaps == [f"{ds}@base"]
    assert zget("canmount", ds) == "noauto"
    assert zget("mounted", ds) == "no"
    with pytest.raises(AlreadyExists):
        zfs_backend.import_image("default", image_src)


def test_import_failure_leaves_nothing(zfs_backend, tmp_path: Path) -> None:
    with pytest.raises(ImageNotFound):
        zfs_backend.import_image("ghost", tmp_path / "missing")
    assert not zfs_backend.has_image("ghost")
    assert zfs_backend.list_images() == ["default"]


def test_remove_image(zfs_backend, image_src: Path, make_ctx: MakeCtx) -> None:
    zfs_backend.import_image("extra/img_1", image_src)
    assert "extra/img_1" in zfs_backend.list_images()
    ctx = make_ctx(image="extra/img_1")
    zfs_backend.provision(ctx)
    with pytest.raises(StateConflict, match="still used"):
        zfs_backend.remove_image("extra/img_1")
    zfs_backend.release(ctx)
    zfs_backend.remove_image("extra/img_1")
    assert zfs_backend.list_images() == ["default"]
    with pytest.raises(ImageNotFound):
        zfs_backend.remove_image("extra/img_1")


# --- provision, clone, independence ---------------------------------------------------------


def test_provision_is_a_mounted_clone(zfs_backend, make_ctx: MakeCtx, image_src: Path) -> None:
    ctx = make_ctx()
    rootfs = zfs_backend.provision(ctx)
    ds = f"{zfs_backend.instances_ds}/{ctx.id}"
    assert mounted_at(rootfs.path) == ds
    assert rootfs.device is None
    assert zget("origin", ds) == f"{zfs_backend.images_ds}/default@base"
    assert zget("canmount", ds) == "noauto"
    # O(1): the clone owns nothing of its own yet, whatever the image's size
    assert int(zget("used", ds)) < 512 << 10
    assert (Path(rootfs.path) / "data/hello.txt").read_text() == "from the image\n"
    assert tree_digest(rootfs.path) == tree_digest(str(image_src))
    with pytest.raises(AlreadyExists):
        zfs_backend.provision(ctx)


def test_unknown_image(zfs_backend, make_ctx: MakeCtx) -> None:
    with pytest.raises(ImageNotFound):
        zfs_backend.provision(make_ctx(image="nope"))


def test_clones_are_independent(zfs_backend, make_ctx: MakeCtx) -> None:
    a, b = make_ctx(), make_ctx()
    ra, rb = Path(zfs_backend.provision(a).path), Path(zfs_backend.provision(b).path)
    (ra / "only-a").write_text("a")
    (rb / "data/hello.txt").unlink()
    (rb / "etc/hostname").write_text("b\n")
    assert not (rb / "only-a").exists()
    assert (ra / "data/hello.txt").read_text() == "from the image\n"
    assert (ra / "etc/hostname").read_text() == "stockade\n"
    c = make_ctx()
    rc = Path(zfs_backend.provision(c).path)
    assert (rc / "data/hello.txt").exists() and not (rc / "only-a").exists()


def test_unmount_and_mount_again(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    path = zfs_backend.provision(ctx).path
    (Path(path) / "kept").write_text("x")
    zfs_backend.unmount(ctx)
    assert mounted_at(path) is None
    zfs_backend.unmount(ctx)  # idempotent
    # a fresh backend object (a new process after a reboot) finds it from ctx alone
    again = make_backend(
        zfs_backend.config.options["dataset"].split("/")[0],
        Path(zfs_backend.config.root),
        zfs_backend.config.host_tag,
    )
    assert again.mount(ctx).path == path
    assert again.mount(ctx).path == path  # idempotent
    assert (Path(path) / "kept").read_text() == "x"


# --- quota and usage ------------------------------------------------------------------------


def test_refquota_is_enforced(zfs_backend, make_ctx: MakeCtx) -> None:
    quota = 24 << 20
    ctx = make_ctx(resources={"disk": "24M"})
    path = Path(zfs_backend.provision(ctx).path)
    ds = f"{zfs_backend.instances_ds}/{ctx.id}"
    assert int(zget("refquota", ds)) == quota
    base = int(zget("referenced", ds))
    written, err = fill(path / "big", 4 * quota)
    assert err in (errno.EDQUOT, errno.ENOSPC), f"no quota error after {written} bytes"
    # stops near the quota: what the image already references counts, ZFS may overshoot by
    # the data of one transaction group
    assert quota - base - (4 << 20) <= written <= quota + (4 << 20), (written, base)
    u = zfs_backend.usage(ctx)
    assert u.quota == quota
    assert u.used >= quota - (4 << 20)
    assert u.available is not None and u.available < 2 << 20
    (path / "big").unlink()


def test_usage_without_quota(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    path = Path(zfs_backend.provision(ctx).path)
    u0 = zfs_backend.usage(ctx)
    assert u0.quota is None
    assert u0.used == int(zget("referenced", f"{zfs_backend.instances_ds}/{ctx.id}"))
    fill(path / "f", 8 << 20)
    txg_sync(ctx)
    u1 = zfs_backend.usage(ctx)
    assert 7 << 20 <= u1.used - u0.used <= 10 << 20
    assert u1.available is not None and u1.available < u0.available


def test_quota_can_change(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(resources={"disk": "16M"})
    path = Path(zfs_backend.provision(ctx).path)
    ds = f"{zfs_backend.instances_ds}/{ctx.id}"
    zfs_backend.set_quota(ctx, 48 << 20)
    assert int(zget("refquota", ds)) == 48 << 20
    fill(path / "f", 20 << 20)
    txg_sync(ctx)
    with pytest.raises(QuotaExceeded):
        zfs_backend.set_quota(ctx, 4 << 20)
    zfs_backend.set_quota(ctx, None)
    assert zget("refquota", ds) == "0"
    assert zfs_backend.usage(ctx).quota is None


# --- snapshots and rollback -----------------------------------------------------------------


def test_rollback_is_byte_exact(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    root = Path(zfs_backend.provision(ctx).path)
    (root / "data/blob").write_bytes(os.urandom(3 << 20))
    (root / "etc/hostname").write_text("before\n")
    os.chmod(root / "data/hello.txt", 0o600)
    before = tree_digest(str(root))
    snap = zfs_backend.snapshot(ctx, "s1")
    assert snap.name == "s1" and snap.created > 0
    (root / "data/blob").write_bytes(os.urandom(1 << 20))
    (root / "etc/hostname").unlink()
    (root / "bin/new").symlink_to("/bin/busybox")
    os.chmod(root / "data/hello.txt", 0o644)
    (root / "data/sub").mkdir()
    assert tree_digest(str(root)) != before
    zfs_backend.rollback(ctx, "s1")  # while mounted
    assert tree_digest(str(root)) == before
    assert mounted_at(str(root)) is not None


def test_rollback_refuses_older_snapshots(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    root = Path(zfs_backend.provision(ctx).path)
    (root / "v").write_text("1")
    zfs_backend.snapshot(ctx, "s1")
    (root / "v").write_text("2")
    zfs_backend.snapshot(ctx, "s2")
    (root / "v").write_text("3")
    zfs_backend.snapshot(ctx, "s3")
    (root / "v").write_text("4")
    with pytest.raises(StateConflict) as ei:
        zfs_backend.rollback(ctx, "s1")
    assert "s2, s3" in str(ei.value) and "latest" in str(ei.value)
    assert ei.value.errno == errno.EEXIST
    assert (root / "v").read_text() == "4"  # refused before anything changed
    assert [s.name for s in zfs_backend.list_snapshots(ctx)] == ["s1", "s2", "s3"]
    with pytest.raises(NotFound):
        zfs_backend.rollback(ctx, "s9")
    zfs_backend.rollback(ctx, "s3")
    assert (root / "v").read_text() == "3"
    zfs_backend.delete_snapshot(ctx, "s3")
    zfs_backend.delete_snapshot(ctx, "s2")
    zfs_backend.rollback(ctx, "s1")
    assert (root / "v").read_text() == "1"


def test_snapshot_list_and_delete(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    zfs_backend.provision(ctx)
    assert zfs_backend.list_snapshots(ctx) == []
    for n in ("a", "b", "c"):
        zfs_backend.snapshot(ctx, n)
    snaps = zfs_backend.list_snapshots(ctx)
    assert [s.name for s in snaps] == ["a", "b", "c"]
    assert all(s.size is not None for s in snaps)
    with pytest.raises(AlreadyExists):
        zfs_backend.snapshot(ctx, "b")
    with pytest.raises(StockadeError):
        zfs_backend.snapshot(ctx, "bad name")
    zfs_backend.delete_snapshot(ctx, "b")
    assert [s.name for s in zfs_backend.list_snapshots(ctx)] == ["a", "c"]
    with pytest.raises(NotFound):
        zfs_backend.delete_snapshot(ctx, "b")


# --- send / receive -------------------------------------------------------------------------


def _pipe_transfer(send: Callable[[int], None], receive: Callable[[int], object]) -> None:
    """Run ``send`` into a pipe in a thread while ``receive`` reads it here."""
    r, w = os.pipe()
    failure: list[BaseException] = []

    def sender() -> None:
        try:
            send(w)
        except BaseException as e:
            failure.append(e)
        finally:
            os.close(w)

    t = threading.Thread(target=sender)
    t.start()
    try:
        receive(r)
    finally:
        os.close(r)
        t.join(60)
    if failure:
        raise failure[0]


def test_send_receive_full_and_incremental(zfs_backend, make_ctx: MakeCtx) -> None:
    src = make_ctx()
    sroot = Path(zfs_backend.provision(src).path)
    (sroot / "data/blob").write_bytes(os.urandom(2 << 20))
    zfs_backend.snapshot(src, "m1")
    state1 = tree_digest(str(sroot))
    assert zfs_backend.send_size(src, "m1") > 2 << 20

    dst = make_ctx(resources={"disk": "64M"})
    _pipe_transfer(lambda fd: zfs_backend.send(src, fd, "m1"), lambda fd: zfs_backend.receive(dst, fd, "m1"))
    dds = f"{zfs_backend.instances_ds}/{dst.id}"
    assert zget("origin", dds) == "-"  # an independent copy, not a clone
    assert int(zget("refquota", dds)) == 64 << 20
    assert zget("mounted", dds) == "no"
    droot = zfs_backend.mount(dst).path
    assert tree_digest(droot) == state1

    # incremental: changes after m1 travel as m1 -> m2
    (sroot / "data/blob").write_bytes(os.urandom(1 << 20))
    (sroot / "data/hello.txt").unlink()
    (sroot / "newdir").mkdir()
    (sroot / "newdir/f").write_text("incremental\n")
    zfs_backend.snapshot(src, "m2")
    state2 = tree_digest(str(sroot))
    assert zfs_backend.send_size(src, "m2", base="m1") < zfs_backend.send_size(src, "m2")
    _pipe_transfer(
        lambda fd: zfs_backend.send(src, fd, "m2", base="m1"),
        lambda fd: zfs_backend.receive(dst, fd, "m2", base="m1", force=True),
    )
    assert mounted_at(droot) == dds  # remounted after the receive
    assert tree_digest(droot) == state2
    assert [s.name for s in zfs_backend.list_snapshots(dst)] == ["m1", "m2"]


def test_receive_refusals(zfs_backend, make_ctx: MakeCtx) -> None:
    src = make_ctx()
    zfs_backend.provision(src)
    zfs_backend.snapshot(src, "x1")
    zfs_backend.snapshot(src, "x2")
    existing = make_ctx()
    zfs_backend.provision(existing)
    with pytest.raises(AlreadyExists):  # refused before reading anything
        zfs_backend.receive(existing, 0, "x1")
    with pytest.raises(NotFound):
        zfs_backend.receive(existing, 0, "x2", base="x1")
    with pytest.raises(NotFound):
        zfs_backend.send(src, 1, "nope")
    # a stream that is not one fails cleanly and leaves no dataset behind
    dst = make_ctx()
    r, w = os.pipe()
    os.write(w, b"this is not a zfs stream" * 10)
    os.close(w)
    with pytest.raises(StockadeError):
        zfs_backend.receive(dst, r, "x1")
    os.close(r)
    assert f"{zfs_backend.instances_ds}/{dst.id}" not in zcmd(
        "zfs", "list", "-H", "-o", "name", "-r", zfs_backend.instances_ds
    )


# --- release and gc -------------------------------------------------------------------------


def test_release_leaves_nothing(zfs_backend, make_ctx: MakeCtx) -> None:
    ctx = make_ctx(resources={"disk": "32M"})
    path = zfs_backend.provision(ctx).path
    zfs_backend.snapshot(ctx, "s1")
    zfs_backend.snapshot(ctx, "s2")
    ds = f"{zfs_backend.instances_ds}/{ctx.id}"
    zfs_backend.release(ctx)
    listing = zcmd("zfs", "list", "-H", "-o", "name", "-t", "all", "-r", zfs_backend.base)
    assert ds not in listing
    assert mounted_at(path) is None
    assert not os.path.exists(path)
    zfs_backend.release(ctx)  # idempotent
    with pytest.raises(NotFound):
        zfs_backend.usage(ctx)


def test_delegated_dataset_is_a_child_never_mounted_on_the_host(zfs_backend, make_ctx: MakeCtx) -> None:
    """What freebsd_jail hands over with `zfs jail` (its side is tested in tests/freebsd)."""
    plain = make_ctx()
    zfs_backend.provision(plain)
    assert "jail_dataset" not in plain.data.get("storage", {})
    ctx = make_ctx(delegate_dataset=True, allow=["mount"])
    path = zfs_backend.provision(ctx).path
    ds = f"{zfs_backend.instances_ds}/{ctx.id}"
    data = ctx.data["storage"]["jail_dataset"]
    assert data == f"{ds}/data"
    assert zget("mountpoint", data) == "none" and zget("mounted", data) == "no"
    assert mounted_at(path) == ds  # the root is still the clone, and only it is mounted
    zfs_backend.release(ctx)
    listing = zcmd("zfs", "list", "-H", "-o", "name", "-t", "all", "-r", zfs_backend.base)
    assert ds not in listing and data not in listing


def test_gc_removes_only_unknown_roots(zfs_backend, make_ctx: MakeCtx) -> None:
    keep, lost = make_ctx(), make_ctx()
    kpath = zfs_backend.provision(keep).path
    lpath = zfs_backend.provision(lost).path
    zfs_backend.snapshot(lost, "s")
    before = set(zcmd("zfs", "list", "-H", "-o", "name", "-r", zfs_backend.instances_ds).split())
    others = {ds for ds in before if ds.rsplit("/", 1)[-1] not in (keep.id, lost.id)}
    known = {keep.id: keep} | {ds.rsplit("/", 1)[-1]: keep for ds in others}
    removed = zfs_backend.gc(known)
    assert removed == [f"zfs dataset {zfs_backend.instances_ds}/{lost.id}"]
    assert mounted_at(kpath) is not None and mounted_at(lpath) is None
    assert zfs_backend.gc(known) == []
    # another host root under the same parent is never touched
    other = make_backend(
        zfs_backend.config.options["dataset"].split("/")[0], Path(zfs_backend.config.root), "t2"
    )
    assert other.gc({}) == []
    assert mounted_at(kpath) is not None


def _listing(pool: str) -> dict[str, str]:
    """Every dataset and snapshot of the pool with its guid, refquota and mount state."""
    out = zcmd("zfs", "list", "-H", "-p", "-o", "name,guid,refquota,mounted", "-t", "all", "-r", pool)
    return {line.split("\t")[0]: line for line in out.splitlines()}


def test_nothing_outside_the_parent(zfs_backend, make_ctx: MakeCtx, pool: str) -> None:
    """Siblings of the parent, one whose name extends the parent's, and one laid out exactly
    like an instance root, survive every operation, gc and a record that names them."""
    lookalike = f"{pool}/stockade-other/{zfs_backend.config.host_tag}/instances"
    for ds in (f"{pool}/outside", f"{pool}/stockade-other", lookalike):
        zcmd("zfs", "create", "-p", "-o", "mountpoint=none", ds)
    zcmd("zfs", "create", "-o", "mountpoint=none", "-o", "refquota=8M", f"{lookalike}/orphan")
    zcmd("zfs", "snapshot", f"{pool}/outside@keep", f"{lookalike}/orphan@keep")
    try:
        before = {n: v for n, v in _listing(pool).items() if not n.startswith(f"{pool}/stockade/")}
        ctx = make_ctx(resources={"disk": "16M"})
        zfs_backend.provision(ctx)
        zfs_backend.snapshot(ctx, "s1")
        zfs_backend.set_quota(ctx, 32 << 20)
        zfs_backend.rollback(ctx, "s1")
        zfs_backend.release(ctx)
        assert zfs_backend.gc({}) == []  # nothing of ours left; the look-alike is not ours
        # records that name a dataset outside the instances dataset are refused, untouched
        for foreign in (f"{pool}/outside", f"{lookalike}/orphan", f"{zfs_backend.images_ds}/default"):
            bad = make_ctx()
            bad.bag("storage")["dataset"] = foreign
            for call in (
                zfs_backend.release,
                zfs_backend.unmount,
                zfs_backend.mount,
                zfs_backend.usage,
                lambda c: zfs_backend.set_quota(c, 1 << 20),
                lambda c: zfs_backend.snapshot(c, "x"),
                lambda c: zfs_backend.rollback(c, "keep"),
            ):
                with pytest.raises(StockadeError, match="refusing to touch"):
                    call(bad)
            bad.data.pop("storage")
        after = {n: v for n, v in _listing(pool).items() if not n.startswith(f"{pool}/stockade/")}
        assert after == before
    finally:
        for ds in (f"{pool}/outside", f"{pool}/stockade-other"):
            subprocess.run(["zfs", "destroy", "-r", ds], check=False)


def test_probe_reasons(pool: str, host_root: Path) -> None:
    assert make_backend(pool, host_root, "t1").probe().ok
    from stockade.interfaces import BackendConfig
    from stockade_zfs.storage import ZfsStorage

    missing = ZfsStorage(BackendConfig(host_root, host_root / "run", "t1", {"dataset": f"{pool}/absent"}))
    reason = missing.probe().reason
    assert f"{pool}/absent" in reason and "does not exist" in reason
    unconfigured = ZfsStorage(BackendConfig(host_root, host_root / "run", "t1", {}))
    assert "no parent dataset configured" in unconfigured.probe().reason
    with pytest.raises(StockadeError, match="no parent dataset"):
        unconfigured.list_images()


def test_clone_time_does_not_grow_with_the_image(
    zfs_backend, make_ctx: MakeCtx, tmp_path: Path, image_src: Path
) -> None:
    import shutil
    import time

    big = tmp_path / "big"
    shutil.copytree(image_src, big, symlinks=True)
    (big / "data/blob").write_bytes(os.urandom(64 << 20))
    zfs_backend.import_image("big", big)
    try:
        times = {}
        for image in ("default", "big"):
            ctx = make_ctx(image=image)
            t0 = time.perf_counter()
            zfs_backend.provision(ctx)
            times[image] = time.perf_counter() - t0
            assert int(zget("used", f"{zfs_backend.instances_ds}/{ctx.id}")) < 512 << 10
            zfs_backend.release(ctx)
        print(
            f"provision (clone + mount): default {times['default'] * 1000:.0f} ms, "
            f"default + 64 MiB {times['big'] * 1000:.0f} ms"
        )
        # generous: a copy of 64 MiB would take seconds under TCG; a clone takes the same time
        assert times["big"] < max(1.0, 3 * times["default"])
    finally:
        zfs_backend.remove_image("big")


def test_native_stream_format_for_migration(zfs_backend, make_ctx: MakeCtx) -> None:
    from stockade import storage_stream

    assert "native:zfs" in storage_stream.formats_for(zfs_backend)
    src = make_ctx()
    sroot = Path(zfs_backend.provision(src).path)
    (sroot / "data/blob").write_bytes(os.urandom(1 << 20))
    (sroot / "etc/hostname").write_text("migrated\n")
    state = tree_digest(str(sroot))
    dst = make_ctx(resources={"disk": "64M"})
    droot = zfs_backend.provision(dst).path
    with (
        storage_stream.sender(zfs_backend, src, "native:zfs") as inp,
        storage_stream.receiver(zfs_backend, dst, "native:zfs") as out,
    ):
        storage_stream.copy(inp, out)
    dds = f"{zfs_backend.instances_ds}/{dst.id}"
    assert mounted_at(droot) == dds
    assert tree_digest(droot) == state
    assert int(zget("refquota", dds)) == 64 << 20
    assert zfs_backend.list_snapshots(src) == [] and zfs_backend.list_snapshots(dst) == []
    names = zcmd("zfs", "list", "-H", "-o", "name", "-r", zfs_backend.instances_ds)
    assert "-receiving" not in names
