"""Behaviour every file-tree storage backend shares, run against dir and overlay on the real
kernel."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from stockade.builtin.dir_storage import FileTreeStorage
from stockade.errors import AlreadyExists, ImageNotFound, NotFound, StateConflict, StorageError
from stockade.features import Feature
from stockade.interfaces import StorageBackend

from .conftest import make_ctx, mounts_in, needs_root

pytestmark = needs_root


def manifest(top: Path) -> dict[str, tuple[Any, ...]]:
    """What a rootfs holds, byte for byte: type, mode, owner, content / link target."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(top))
            if stat.S_ISLNK(st.st_mode):
                extra: Any = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                extra = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
            else:
                extra = None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra)
    return out


def test_declarations(backend: FileTreeStorage) -> None:
    assert isinstance(backend, StorageBackend)
    assert backend.probe().ok
    assert Feature.SNAPSHOT in backend.features
    assert backend.semantics.restore == "any_snapshot"
    if backend.name == "overlay":
        assert Feature.COPY_ON_WRITE in backend.features and backend.priority == 100
    else:
        assert Feature.COPY_ON_WRITE not in backend.features and backend.priority == 10


def test_plugins_register_both() -> None:
    from stockade.plugins import PluginManager

    pm = PluginManager(blocked=["zfs", "linux_ns", "freebsd_jail"])
    names = {r.name for r in pm.registry.of_kind("storage")}
    assert {"dir", "overlay"} <= names


def test_images(backend: FileTreeStorage, image_src: Path) -> None:
    assert backend.has_image("default")
    assert backend.list_images() == ["default"]
    with pytest.raises(AlreadyExists):
        backend.import_image("default", image_src)
    backend.import_image("library/alpine:3.19", image_src)
    assert backend.list_images() == ["default", "library/alpine:3.19"]
    assert manifest(backend.image_dir("library/alpine:3.19")) == manifest(image_src)
    backend.remove_image("library/alpine:3.19")
    assert not backend.has_image("library/alpine:3.19")
    with pytest.raises(ImageNotFound, match=r"'nope' not found in storage .*\(images: default\)"):
        backend.remove_image("nope")
    with pytest.raises(StorageError, match="is not a directory"):
        backend.import_image("x", image_src / "etc/passwd")
    assert not [p for p in backend.images_dir.iterdir() if p.name.startswith(".")]


def test_provision_missing_image(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1", image="nope")
    with pytest.raises(ImageNotFound, match=r"image 'nope' not found .*\(images: default\)"):
        backend.provision(ctx)
    assert not backend.instance_dir(ctx).exists()


def test_writes_do_not_touch_image(backend: FileTreeStorage, image_src: Path) -> None:
    before = manifest(backend.image_dir("default"))
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        assert manifest(rootfs) == before
        assert str(rootfs).startswith(str(backend.config.root)) and "stockade" in str(rootfs)
        (rootfs / "etc/hostname").write_text("changed\n")
        (rootfs / "data/gone.txt").unlink()
        shutil.rmtree(rootfs / "data/doomed")
        (rootfs / "new.bin").write_bytes(os.urandom(4096))
        os.chmod(rootfs / "data/mode.txt", 0o600)
        assert manifest(backend.image_dir("default")) == before
        assert manifest(image_src) == before
        assert ctx.bag("storage")["image"] == "default"
    finally:
        backend.release(ctx)


def test_clones_are_independent(backend: FileTreeStorage) -> None:
    a, b = make_ctx(backend, "a"), make_ctx(backend, "b")
    ra, rb = Path(backend.provision(a).path), Path(backend.provision(b).path)
    try:
        assert ra != rb
        (ra / "etc/hostname").write_text("a\n")
        (ra / "only-a").write_text("a")
        (rb / "data/gone.txt").unlink()
        assert (rb / "etc/hostname").read_text() == "stockade\n"
        assert not (rb / "only-a").exists()
        assert (ra / "data/gone.txt").exists()
    finally:
        backend.release(a)
        backend.release(b)


def test_provision_twice_refused(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    backend.provision(ctx)
    try:
        with pytest.raises(AlreadyExists, match="already provisioned"):
            backend.provision(ctx)
    finally:
        backend.release(ctx)


def mutate_before_snapshot(rootfs: Path) -> None:
    """Changes that put whiteouts, opaque dirs, modes and symlinks into an overlay upper."""
    (rootfs / "data/gone.txt").unlink()  # whiteout
    shutil.rmtree(rootfs / "data/replaced")  # replaced directory: opaque
    (rootfs / "data/replaced").mkdir()
    (rootfs / "data/replaced/upper-only.txt").write_text("new dir contents\n")
    os.chmod(rootfs / "data/mode.txt", 0o600)
    os.chown(rootfs / "data/mode.txt", 1234, 5678)
    (rootfs / "data/link").unlink()
    os.symlink("replaced/upper-only.txt", rootfs / "data/link")
    (rootfs / "data/keep/a.txt").write_text("changed before the snapshot\n")
    (rootfs / "data/exec.sh").write_text("#!/bin/sh\n")
    os.chmod(rootfs / "data/exec.sh", 0o4755)


def mutate_after_snapshot(rootfs: Path) -> None:
    shutil.rmtree(rootfs / "data/doomed")  # from the image, deleted after: must come back
    shutil.rmtree(rootfs / "data/keep")
    (rootfs / "data/keep").mkdir()  # replaced after: old contents must come back
    (rootfs / "data/keep/intruder").write_text("x")
    (rootfs / "data/gone.txt").write_text("resurrected\n")  # deleted before: must stay gone
    (rootfs / "data/replaced/lower-only.txt").write_text("x")
    os.chmod(rootfs / "data/mode.txt", 0o777)
    (rootfs / "data/link").unlink()
    (rootfs / "data/link").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0::/:/bin/false\n")
    (rootfs / "bin/busybox").unlink()
    (rootfs / "big.bin").write_bytes(os.urandom(1 << 20))


def rootfs_of(backend: FileTreeStorage, ctx: Any) -> Path:
    return Path(backend.mount(ctx).path)


def test_snapshot_rollback_restores_exactly(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        mutate_before_snapshot(rootfs)
        at_snapshot = manifest(rootfs)
        snap = backend.snapshot(ctx, "s1")
        assert snap.name == "s1" and snap.size is not None and snap.size > 0
        assert [s.name for s in backend.list_snapshots(ctx)] == ["s1"]
        mutate_after_snapshot(rootfs)
        assert manifest(rootfs) != at_snapshot
        backend.unmount(ctx)  # the Host rolls back stopped instances
        backend.rollback(ctx, "s1")
        rootfs = rootfs_of(backend, ctx)
        assert manifest(rootfs) == at_snapshot
        assert not (rootfs / "data/gone.txt").exists()
        assert sorted(os.listdir(rootfs / "data/replaced")) == ["upper-only.txt"]
        assert (rootfs / "data/doomed/old.txt").read_text() == "old dir contents\n"
        assert stat.S_IMODE((rootfs / "data/exec.sh").stat().st_mode) == 0o4755
        # and a rolled-back instance still writes, and rolls back again
        (rootfs / "data/doomed/old.txt").unlink()
        backend.rollback(ctx, "s1")
        assert manifest(rootfs_of(backend, ctx)) == at_snapshot
    finally:
        backend.release(ctx)


def test_rollback_while_mounted_remounts(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        backend.snapshot(ctx, "s1")
        (rootfs / "etc/hostname").write_text("later\n")
        backend.rollback(ctx, "s1")
        assert (rootfs / "etc/hostname").read_text() == "stockade\n"
    finally:
        backend.release(ctx)


def test_rollback_to_older_snapshot(backend: FileTreeStorage) -> None:
    assert backend.semantics.restore == "any_snapshot"
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        (rootfs / "v").write_text("1")
        (rootfs / "data/gone.txt").unlink()
        backend.snapshot(ctx, "s1")
        m1 = manifest(rootfs)
        (rootfs / "v").write_text("2")
        shutil.rmtree(rootfs / "data/keep")
        backend.snapshot(ctx, "s2")
        m2 = manifest(rootfs)
        (rootfs / "v").write_text("3")
        backend.unmount(ctx)
        backend.rollback(ctx, "s1")
        assert manifest(rootfs_of(backend, ctx)) == m1
        backend.rollback(ctx, "s2")  # newer than the current state: still there
        assert manifest(rootfs_of(backend, ctx)) == m2
        backend.rollback(ctx, "s1")
        (rootfs / "v").write_text("4")
        backend.snapshot(ctx, "s3")  # a branch on s1
        m3 = manifest(rootfs)
        backend.rollback(ctx, "s2")
        assert manifest(rootfs_of(backend, ctx)) == m2
        backend.rollback(ctx, "s3")
        assert manifest(rootfs_of(backend, ctx)) == m3
        assert [s.name for s in backend.list_snapshots(ctx)] == ["s1", "s2", "s3"]
    finally:
        backend.release(ctx)


def test_delete_snapshot_rules(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        backend.snapshot(ctx, "s1")
        (rootfs / "v").write_text("2")
        backend.snapshot(ctx, "s2")  # overlay: built on nothing but the image (s1 is a copy)
        with pytest.raises(AlreadyExists):
            backend.snapshot(ctx, "s1")
        with pytest.raises(NotFound, match=r"no snapshot 'nope' \(snapshots: s1, s2\)"):
            backend.delete_snapshot(ctx, "nope")
        for bad in ("", "../x", ".hidden", "a/b", "x" * 64):
            with pytest.raises(StorageError, match="not a valid snapshot name"):
                backend.snapshot(ctx, bad)
        backend.rollback(ctx, "s1")
        (rootfs / "v").write_text("3")
        backend.snapshot(ctx, "s3")  # overlay: its base is [s1, image]
        if backend.name == "overlay":
            with pytest.raises(StateConflict, match=r"'s1' .* is a layer of its current root"):
                backend.delete_snapshot(ctx, "s1")
            backend.rollback(ctx, "s2")
            with pytest.raises(StateConflict, match=r"'s1' .* is the base of snapshot\(s\) s3"):
                backend.delete_snapshot(ctx, "s1")
            backend.delete_snapshot(ctx, "s3")
            backend.delete_snapshot(ctx, "s1")
            with pytest.raises(StateConflict, match=r"'s2' .* is a layer of its current root"):
                backend.delete_snapshot(ctx, "s2")
            assert [s.name for s in backend.list_snapshots(ctx)] == ["s2"]
            assert not (backend.instance_dir(ctx) / "snapshots/s1").exists()
        else:
            # full copies depend on nothing: any snapshot can go at any time
            backend.delete_snapshot(ctx, "s1")
            backend.delete_snapshot(ctx, "s3")
            backend.rollback(ctx, "s2")
            assert (rootfs / "v").read_text() == "2"
            backend.delete_snapshot(ctx, "s2")
            assert backend.list_snapshots(ctx) == []
    finally:
        backend.release(ctx)


def test_release_leaves_nothing(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    backend.provision(ctx)
    backend.snapshot(ctx, "s1")
    d = backend.instance_dir(ctx)
    assert d.is_dir()
    backend.release(ctx)
    assert not d.exists()
    assert mounts_in(backend.instances_dir) == []
    assert "storage" not in ctx.data
    backend.release(ctx)  # idempotent
    backend.unmount(ctx)
    with pytest.raises(NotFound):
        backend.mount(ctx)
    # half-made: a directory, a stray file and a mount, no record
    never = make_ctx(backend, "c2")
    d2 = backend.instance_dir(never)
    (d2 / "sub").mkdir(parents=True)
    (d2 / "junk").write_text("x")
    from stockade import linux

    linux.mount("stockade-test", str(d2 / "sub"), "tmpfs", 0, "size=1m")
    backend.release(never)
    assert not d2.exists() and mounts_in(backend.instances_dir) == []


def test_release_never_crosses_a_mount(backend: FileTreeStorage, root: Path) -> None:
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    precious = root / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("host data")
    (rootfs / "mnt/vol").mkdir()
    from stockade import linux

    linux.mount(str(precious), str(rootfs / "mnt/vol"), None, linux.MS_BIND)
    backend.release(ctx)
    assert (precious / "keep.txt").read_text() == "host data"
    assert mounts_in(backend.instances_dir) == []


def test_remove_image_refused_while_used(backend: FileTreeStorage, image_src: Path) -> None:
    backend.import_image("other", image_src)
    ctx = make_ctx(backend, "user1", image="other")
    backend.provision(ctx)
    try:
        with pytest.raises(StateConflict, match=r"'other' is used by instance.* user1"):
            backend.remove_image("other")
    finally:
        backend.release(ctx)
    backend.remove_image("other")
    assert backend.list_images() == ["default"]


def test_gc_removes_orphans(backend: FileTreeStorage) -> None:
    keep, orphan = make_ctx(backend, "keep"), make_ctx(backend, "orphan")
    rk = Path(backend.provision(keep).path)
    backend.provision(orphan)
    backend.snapshot(orphan, "s1")
    # an abandoned temp dir of a process that no longer exists
    abandoned = backend.images_dir / ".tmp-999999999-dead-x"
    abandoned.mkdir()
    try:
        gone = backend.gc({"keep": keep})
        assert any(orphan.id in line for line in gone), gone
        assert any("abandoned" in line for line in gone), gone
        assert not backend.instance_dir(orphan).exists()
        assert not abandoned.exists()
        assert (rk / "etc/hostname").read_text() == "stockade\n"
        assert mounts_in(backend.instances_dir) == mounts_in(backend.instance_dir(keep))
        assert backend.gc({"keep": keep}) == []
    finally:
        backend.release(keep)
        backend.release(orphan)


def test_usage_counts_instance_bytes(backend: FileTreeStorage) -> None:
    ctx = make_ctx(backend, "c1")
    rootfs = Path(backend.provision(ctx).path)
    try:
        before = backend.usage(ctx).used
        (rootfs / "blob").write_bytes(os.urandom(2 << 20))
        os.link(rootfs / "blob", rootfs / "blob-link")  # counted once
        os.sync()
        after = backend.usage(ctx).used
        assert 2 << 20 <= after - before < (2 << 20) + (256 << 10)
        assert backend.usage(ctx).quota is None
    finally:
        backend.release(ctx)


def test_disk_quota_check(backend: FileTreeStorage) -> None:
    from stockade.spec import InstanceSpec

    spec = InstanceSpec.from_dict({"name": "q", "resources": {"disk": "64M"}})
    if Feature.DISK_QUOTA in backend.features:
        assert backend.check(spec) == []
    else:
        assert any("resources.disk" in line for line in backend.check(spec))
    assert backend.check(InstanceSpec(name="q")) == []


def test_failed_provision_leaves_nothing(backend: FileTreeStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    # Inject the failure of the step that does the real work (copy or mount): the undo path
    # is what is under test, not the failure.
    import errno

    from stockade import linux
    from stockade.builtin import dir_storage

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]))

    monkeypatch.setattr(linux, "mount", no_space)
    monkeypatch.setattr(dir_storage, "copy_tree", no_space)
    ctx = make_ctx(backend, "c1")
    with pytest.raises(StorageError, match="No space left on device"):
        backend.provision(ctx)
    assert not backend.instance_dir(ctx).exists()
    assert mounts_in(backend.instances_dir) == []
    assert "storage" not in ctx.data
