"""The ``dir`` storage backend: every instance gets a full copy of its image.

Slow (provision and snapshot copy every byte) and obviously correct: the reference
every other storage backend is compared with. The image store, the per-instance
record, snapshot-name rules, release and gc are shared through ``FileTreeStorage``,
which the overlay backend builds on too.

Layout under ``<root>/storage/<backend>/``::

    images/<image>/              the image tree (read-only by convention)
    instances/<id>/meta.json     what provision made; the source of truth for this backend
    instances/<id>/...           backend-specific (dir: rootfs/, snapshots/<name>/)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from stockade.errors import (
    AlreadyExists,
    ImageNotFound,
    NotFound,
    StateConflict,
    StorageError,
)
from stockade.features import Feature, Semantics
from stockade.interfaces import InstanceContext, RootFS, Snapshot, StorageBase, StorageUsage
from stockade.spec import NAME_RE, InstanceSpec

META = "meta.json"
META_VERSION = 1
_TMP = ".tmp-"  # prefix of half-made entries; never a valid image, instance or snapshot name


# --- file-tree helpers (shared with the overlay backend) ------------------------------------


def copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (which must not exist) keeping owners, modes, times, xattrs,
    hard links, device nodes (overlay whiteouts) and sharing extents where the fs can."""
    import subprocess

    # GNU cp knows every corner (xattrs incl. trusted.overlay.*, whiteouts, hard links,
    # sparse files, reflinks); BSD cp has no --reflink.
    cmd = ["cp", "-a", "--reflink=auto"] if sys.platform.startswith("linux") else ["cp", "-a"]
    try:
        subprocess.run([*cmd, "--", str(src), str(dst)], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or "").strip().splitlines()
        detail = lines[-1] if lines else f"cp exited {e.returncode}"
        raise StorageError(f"copying {src} to {dst} failed: {detail}") from e
    except OSError as e:
        raise StorageError(f"copying {src} to {dst} failed: cannot run cp: {e.strerror}") from e


def tree_usage(*paths: Path) -> int:
    """Bytes allocated on disk under ``paths`` (like ``du``): hard links counted once, other
    file systems mounted below not entered."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        try:
            st = top.lstat()
        except FileNotFoundError:
            continue
        dev = st.st_dev
        stack = [top]
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512
        while stack:
            d = stack.pop()
            try:
                entries = list(os.scandir(d))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for ent in entries:
                try:
                    est = ent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if est.st_dev != dev:
                    continue
                key = (est.st_dev, est.st_ino)
                if est.st_nlink > 1:
                    if key in seen:
                        continue
                    seen.add(key)
                total += est.st_blocks * 512
                if ent.is_dir(follow_symlinks=False):
                    stack.append(Path(ent.path))
    return total


def mounts_below(path: Path) -> list[str]:
    if not sys.platform.startswith("linux"):
        return []
    from stockade import linux

    return linux.mounts_under(str(path))


def unmount_below(path: Path) -> list[str]:
    """Unmount everything at or below ``path`` (lazily when busy)."""
    if not sys.platform.startswith("linux"):
        return []
    from stockade import linux

    try:
        return linux.umount_tree(str(path))
    except OSError as e:
        raise StorageError(f"cannot unmount {e.filename or path}: {e.strerror}") from e


def remove_tree(path: Path) -> bool:
    """Delete ``path`` and everything below; True if something went. Never crosses a mount:
    whatever is mounted below is unmounted first, so a bind mount's source is never touched."""
    if not path.exists() and not path.is_symlink():
        return False
    unmount_below(path)
    left = mounts_below(path)
    if left:
        raise StorageError(f"cannot delete {path}: still mounted at {left[0]}")
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return True
    try:
        shutil.rmtree(path)
    except PermissionError:
        # An instance allowed to chflags may have left immutable/append-only files.
        if sys.platform.startswith("linux"):
            import subprocess

            subprocess.run(["chattr", "-R", "-i", "-a", "--", str(path)], capture_output=True, check=False)
        try:
            shutil.rmtree(path)
        except OSError as e:
            raise StorageError(f"cannot delete {e.filename or path}: {e.strerror}") from e
    except OSError as e:
        raise StorageError(f"cannot delete {e.filename or path}: {e.strerror}") from e
    return True


def write_json_atomic(path: Path, data: Mapping[str, Any], *, durable: bool = True) -> None:
    tmp = path.with_name(f"{_TMP}{os.getpid()}-{os.urandom(4).hex()}-{path.name}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(data, separators=(",", ":")))  # the C encoder: dump() is pure Python
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {e.strerror}") from e


def tmp_name(what: str) -> str:
    """A temp entry name that says who made it, so gc can tell abandoned ones from live ones."""
    return f"{_TMP}{os.getpid()}-{os.urandom(4).hex()}-{what}"


def tmp_owner_gone(name: str) -> bool:
    try:
        pid = int(name[len(_TMP) :].split("-", 1)[0])
    except ValueError:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def check_snapshot_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise StorageError(
            f"{name!r} is not a valid snapshot name (letters, digits, '_', '.', '-'; 1-63 chars, "
            "starting with a letter or digit)",
            errno=errno.EINVAL,
        )


def check_image_name(image: str) -> None:
    if not isinstance(image, str) or not NAME_RE.match(image.replace("/", "_").replace(":", "_")):
        raise StorageError(f"{image!r} is not a valid image name", errno=errno.EINVAL)


# --- the shared base ------------------------------------------------------------------------


class FileTreeStorage(StorageBase):
    """Images as directory trees, one directory and one meta.json per instance.

    Subclasses implement provision/mount/unmount/snapshot/rollback/delete_snapshot/usage
    and may add keys to the instance record; release, gc and the image store are here.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.base = Path(config.root) / "storage" / self.name
        self.images_dir = self.base / "images"
        self.instances_dir = self.base / "instances"

    # -- layout --

    def _ensure_dirs(self) -> None:
        try:
            # 0711: an instance root mapped to an unprivileged uid must traverse down to its
            # rootfs; listing (finding other instances' trees) stays root's.
            for d, mode in (
                (self.base, 0o711),
                (self.images_dir, 0o700),
                (self.instances_dir, 0o711),
            ):
                d.mkdir(parents=True, exist_ok=True)
                os.chmod(d, mode)
        except OSError as e:
            raise StorageError(f"storage {self.name!r}: cannot create {e.filename}: {e.strerror}") from e

    def image_dir(self, image: str) -> Path:
        check_image_name(image)
        return self.images_dir / quote(image, safe="")

    def instance_dir(self, ctx_or_id: InstanceContext | str) -> Path:
        iid = ctx_or_id if isinstance(ctx_or_id, str) else ctx_or_id.id
        if not iid or "/" in iid or iid in (".", "..") or iid.startswith(_TMP) or "\0" in iid:
            raise StorageError(f"storage {self.name!r}: {iid!r} is not a usable instance id")
        return self.instances_dir / iid

    # -- images --

    def has_image(self, image: str) -> bool:
        return self.image_dir(image).is_dir()

    def list_images(self) -> list[str]:
        try:
            names = [e.name for e in os.scandir(self.images_dir) if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return sorted(unquote(n) for n in names if not n.startswith("."))

    def import_image(self, image: str, source: Path) -> None:
        dest = self.image_dir(image)
        source = Path(source)
        if not source.is_dir():
            raise StorageError(f"cannot import image {image!r}: {source} is not a directory")
        if dest.exists():
            raise AlreadyExists(
                f"image {image!r} already exists in storage {self.name!r} (remove it first to replace it)"
            )
        self._ensure_dirs()
        tmp = self.images_dir / tmp_name(dest.name)
        try:
            copy_tree(source, tmp)
            try:
                os.rename(tmp, dest)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise AlreadyExists(
                        f"image {image!r} already exists in storage {self.name!r} (imported concurrently)"
                    ) from e
                raise StorageError(f"cannot import image {image!r}: {e.strerror}") from e
        finally:
            if tmp.exists():
                remove_tree(tmp)

    def remove_image(self, image: str) -> None:
        d = self.image_dir(image)
        if not d.is_dir():
            raise self._image_not_found(image)
        users = sorted(m.get("name") or iid for iid, m in self._records() if m.get("image") == image)
        if users:
            raise StateConflict(
                f"image {image!r} is used by instance(s) {', '.join(users)} in storage "
                f"{self.name!r}; delete them first"
            )
        trash = self.images_dir / tmp_name(d.name)
        try:
            os.rename(d, trash)  # gone at once for everyone; the slow delete follows
        except OSError as e:
            raise StorageError(f"cannot remove image {image!r}: {e.strerror}") from e
        remove_tree(trash)

    def _image_not_found(self, image: str) -> ImageNotFound:
        names = ", ".join(self.list_images()) or "none"
        return ImageNotFound(f"image {image!r} not found in storage {self.name!r} (images: {names})")

    def _require_image(self, image: str) -> Path:
        d = self.image_dir(image)
        if not d.is_dir():
            raise self._image_not_found(image)
        return d

    # -- instance records --

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            entries = list(os.scandir(self.instances_dir))
        except FileNotFoundError:
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                with open(Path(e.path) / META) as f:
                    yield e.name, json.load(f)
            except (OSError, ValueError):
                continue

    def _load(self, ctx: InstanceContext) -> dict[str, Any]:
        path = self.instance_dir(ctx) / META
        try:
            with open(path) as f:
                meta: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise NotFound(
                f"instance {ctx.name!r} has no storage in {self.name!r} "
                "(not provisioned, or already released)"
            ) from None
        except (OSError, ValueError) as e:
            raise StorageError(f"instance {ctx.name!r}: cannot read {path}: {e}") from e
        return meta

    def _save(self, ctx: InstanceContext, meta: dict[str, Any]) -> None:
        write_json_atomic(self.instance_dir(ctx) / META, meta, durable=ctx.durable)
        bag = ctx.bag("storage")
        bag.clear()
        bag.update(json.loads(json.dumps(meta)))  # a copy the Host can persist as is
        bag["dir"] = str(self.instance_dir(ctx))

    def _new_record(self, ctx: InstanceContext) -> dict[str, Any]:
        return {
            "version": META_VERSION,
            "backend": self.name,
            "id": ctx.id,
            "name": ctx.name,
            "image": ctx.spec.image,
            "created": time.time(),
            "snapshots": {},
        }

    def _start_instance_dir(self, ctx: InstanceContext) -> Path:
        """Make the instance directory, or refuse if the instance is already provisioned."""
        d = self.instance_dir(ctx)
        if (d / META).exists():
            raise AlreadyExists(
                f"instance {ctx.name!r} is already provisioned in storage {self.name!r} (release it first)"
            )
        if d.exists():
            self._remove_instance(d)  # half-made by an interrupted provision
        try:
            try:
                self._make_instance_dir(d)
            except FileNotFoundError:
                self._ensure_dirs()  # first instance of this root; not on every provision
                self._make_instance_dir(d)
            self._set_instance_dir_owner(ctx, d)
        except OSError as e:
            raise StorageError(f"instance {ctx.name!r}: cannot create {d}: {e.strerror}") from e
        return d

    def _make_instance_dir(self, d: Path) -> None:
        d.mkdir(mode=0o700)

    @staticmethod
    def _set_instance_dir_owner(ctx: InstanceContext, d: Path) -> None:
        # Like Incus: a user-namespaced instance's dir is 0100 and owned by its mapped root,
        # so that root (and host root) can reach the rootfs and no other host user can
        # (setuid binaries in a rootfs must not be reachable from the host).
        userns = ctx.spec.user_namespace
        if userns is None:
            return
        root_map = next((m for m in userns.uid_map if m.container_id == 0), None)
        if root_map is None:
            return
        gid_map = next((m for m in userns.gid_map if m.container_id == 0), None)
        os.chown(d, root_map.host_id, gid_map.host_id if gid_map else 0)
        os.chmod(d, 0o100)

    # -- what each subclass provides --

    def provision(self, ctx: InstanceContext) -> RootFS:
        raise NotImplementedError

    def usage(self, ctx: InstanceContext) -> StorageUsage:
        raise NotImplementedError

    # -- shared operations --

    def check(self, spec: InstanceSpec) -> list[str]:
        problems: list[str] = []
        if spec.resources.disk is not None and Feature.DISK_QUOTA not in self.features:
            problems.append(f"resources.disk: storage {self.name!r} has no disk quota")
        return problems

    def list_snapshots(self, ctx: InstanceContext) -> list[Snapshot]:
        meta = self._load(ctx)
        snaps = [
            Snapshot(name=n, created=float(s["created"]), size=s.get("size"))
            for n, s in meta["snapshots"].items()
        ]
        return sorted(snaps, key=lambda s: (s.created, s.name))

    def _snapshot_record(self, ctx: InstanceContext, meta: dict[str, Any], name: str) -> dict[str, Any]:
        check_snapshot_name(name)
        snap: dict[str, Any] | None = meta["snapshots"].get(name)
        if snap is None:
            have = ", ".join(sorted(meta["snapshots"])) or "none"
            raise NotFound(f"instance {ctx.name!r} has no snapshot {name!r} (snapshots: {have})")
        return snap

    def _check_new_snapshot(self, ctx: InstanceContext, meta: dict[str, Any], name: str) -> None:
        check_snapshot_name(name)
        if name in meta["snapshots"]:
            raise AlreadyExists(f"instance {ctx.name!r} already has a snapshot {name!r}")

    def release(self, ctx: InstanceContext) -> None:
        self._remove_instance(self.instance_dir(ctx))
        ctx.data.pop("storage", None)

    def _remove_instance(self, d: Path) -> bool:
        """Delete an instance directory (unmounting what is below it); True if it existed."""
        return remove_tree(d)

    def gc(self, known: Mapping[str, InstanceContext]) -> list[str]:
        ids = {c.id for c in known.values()}
        gone: list[str] = []
        for parent in (self.instances_dir, self.images_dir):
            try:
                entries = list(os.scandir(parent))
            except FileNotFoundError:
                continue
            for e in entries:
                # one stubborn leftover must not keep gc from the others
                try:
                    if e.name.startswith(_TMP):
                        if tmp_owner_gone(e.name) and remove_tree(Path(e.path)):
                            gone.append(f"storage {self.name!r}: removed abandoned {e.path}")
                    elif parent == self.instances_dir and e.name not in ids:
                        mounted = mounts_below(Path(e.path))
                        if self._remove_instance(Path(e.path)):
                            what = f" (unmounted {len(mounted)})" if mounted else ""
                            gone.append(f"storage {self.name!r}: removed orphan instance {e.name}{what}")
                except StorageError as err:
                    gone.append(f"storage {self.name!r}: could not remove {e.path}: {err}")
        return gone


def exchange(a: Path, b: Path) -> None:
    """Swap two directory entries atomically where the OS can (renameat2 RENAME_EXCHANGE)."""
    if sys.platform.startswith("linux"):
        import ctypes

        from stockade import linux

        at_fdcwd, rename_exchange = -100, 2
        if linux.libc().renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), str(a))
    # Not atomic: a crash between the renames leaves ``a`` missing and ``b`` complete.
    aside = a.with_name(tmp_name(a.name))
    os.rename(a, aside)
    os.rename(b, a)
    os.rename(aside, b)


# --- the dir backend ------------------------------------------------------------------------


class DirStorage(FileTreeStorage):
    """Plain copies: instances/<id>/rootfs, snapshots in instances/<id>/snapshots/<name>."""

    name: ClassVar[str] = "dir"
    priority: ClassVar[int] = 10
    features: ClassVar[frozenset[Feature]] = frozenset({Feature.SNAPSHOT})
    semantics: ClassVar[Semantics] = Semantics(restore="any_snapshot")

    def _rootfs(self, ctx: InstanceContext) -> Path:
        return self.instance_dir(ctx) / "rootfs"

    def provision(self, ctx: InstanceContext) -> RootFS:
        image = self._require_image(ctx.spec.image)
        d = self._start_instance_dir(ctx)
        try:
            meta = self._new_record(ctx)
            meta["rootfs"] = "rootfs"
            self._save(ctx, meta)  # first, so remove_image sees the user while we copy
            tmp = d / tmp_name("rootfs")
            copy_tree(image, tmp)
            os.rename(tmp, d / "rootfs")
        except BaseException as e:
            self.release(ctx)
            if isinstance(e, OSError):
                raise StorageError(f"instance {ctx.name!r}: provision failed: {e.strerror}") from e
            raise
        return RootFS(path=str(d / "rootfs"))

    def mount(self, ctx: InstanceContext) -> RootFS:
        self._load(ctx)
        rootfs = self._rootfs(ctx)
        if not rootfs.is_dir():
            raise StorageError(
                f"instance {ctx.name!r}: {rootfs} is missing (half-made; release and provision it again)"
            )
        return RootFS(path=str(rootfs))

    def unmount(self, ctx: InstanceContext) -> None:
        return None  # a plain directory

    def snapshot(self, ctx: InstanceContext, name: str) -> Snapshot:
        meta = self._load(ctx)
        self._check_new_snapshot(ctx, meta, name)
        snaps = self.instance_dir(ctx) / "snapshots"
        dest = snaps / name
        remove_tree(dest)  # left by a snapshot interrupted before its record was written
        tmp = snaps / tmp_name(name)
        try:
            snaps.mkdir(exist_ok=True)
            copy_tree(self._rootfs(ctx), tmp)
            os.rename(tmp, dest)
        except BaseException as e:
            remove_tree(tmp)
            if isinstance(e, OSError):
                raise StorageError(f"instance {ctx.name!r}: snapshot {name!r} failed: {e.strerror}") from e
            raise
        snap = Snapshot(name=name, created=time.time(), size=tree_usage(dest))
        meta["snapshots"][name] = {"created": snap.created, "size": snap.size}
        self._save(ctx, meta)
        return snap

    def rollback(self, ctx: InstanceContext, name: str) -> None:
        meta = self._load(ctx)
        self._snapshot_record(ctx, meta, name)
        d = self.instance_dir(ctx)
        fresh = d / tmp_name("rootfs")
        try:
            copy_tree(d / "snapshots" / name, fresh)
            # The rootfs path never disappears: it is the old tree, then the snapshot's copy.
            exchange(d / "rootfs", fresh)
        except OSError as e:
            remove_tree(fresh)
            raise StorageError(f"instance {ctx.name!r}: rollback to {name!r} failed: {e.strerror}") from e
        except BaseException:
            remove_tree(fresh)
            raise
        remove_tree(fresh)

    def delete_snapshot(self, ctx: InstanceContext, name: str) -> None:
        meta = self._load(ctx)
        self._snapshot_record(ctx, meta, name)
        del meta["snapshots"][name]
        self._save(ctx, meta)
        remove_tree(self.instance_dir(ctx) / "snapshots" / name)

    def usage(self, ctx: InstanceContext) -> StorageUsage:
        self._load(ctx)
        d = self.instance_dir(ctx)
        return StorageUsage(used=tree_usage(d / "rootfs", d / "snapshots"))
