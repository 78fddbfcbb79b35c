"""Root file systems: clones, copy-on-write, snapshot and rollback, disk quota."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import pytest

from ..features import Feature
from ..host import Instance
from ..images import build_default_image
from .harness import create, running, sh, unique
from .marks import conformance_column, requires
from .outcomes import not_supported
from .plugin import note
from .subject import MARKER_PATH, Subject

MIB = 1 << 20
# The whole tree, from inside (busybox): type, mode, owner and name (a symlink's target with
# it) of every path on the root file system, and the md5 of every regular file.
TREE = (
    "find / -xdev -exec stat -c '%F|%a|%u:%g|%N' {} + | sort; "
    "find / -xdev -type f -exec md5sum {} + | sort -k 2"
)
# After the snapshot: rewrite, delete, create, chmod, chown, re-link, mkdir.
CHANGES = (
    "echo overwritten > /root/new.bin; echo x > /etc/os-release; echo back > /etc/shadow; "
    "echo extra > /root/extra; rm /etc/passwd; chmod 600 /etc/group; chown 1:1 /etc/os-release; "
    "ln -sf /bin/false /bin/true; mkdir -p /srv/new/dir; sync"
)


def _tree(inst: Instance) -> list[str]:
    r = inst.run(["/bin/sh", "-c", TREE])
    lines = r.stdout.decode(errors="replace").splitlines()
    assert r.exit_status == 0 and len(lines) > 20, (
        f"could not list the tree inside (exit {r.exit_status}): {r.stderr.decode(errors='replace')[-300:]}"
    )
    return lines


class StorageSuite:
    """Subclass with a ``stockade_backends`` fixture: storage measured through instances."""

    @conformance_column("lifecycle")
    def test_clones_are_independent(self, stockade_subject: Subject) -> None:
        """A write in one instance is seen neither by another nor by the image."""
        with (
            running(stockade_subject, prefix="clone-a") as a,
            running(stockade_subject, prefix="clone-b") as b,
        ):
            r = a.run(["/bin/sh", "-c", f"echo changed > {MARKER_PATH}; echo a > /root/only-a; sync"])
            assert r.exit_status == 0, r.stderr
            seen = b.run(["/bin/sh", "-c", f"cat {MARKER_PATH}; ls /root"]).stdout.decode()
            assert stockade_subject.marker in seen and "only-a" not in seen, (
                f"clone b sees a's writes: {seen!r}"
            )
        fresh = sh(stockade_subject, f"cat {MARKER_PATH}; ls /root")
        assert stockade_subject.marker in fresh.stdout and "only-a" not in fresh.stdout, (
            f"the image changed under a clone's write: {fresh.stdout!r}"
        )

    @requires(Feature.COPY_ON_WRITE)
    def test_copy_on_write(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Clones of a large image take (almost) no space: the file system's free space barely moves."""
        size = 24 * MIB
        image = "stockade-conformance-big"
        src = stockade_subject.root / "big-src"
        build_default_image(src)
        with open(src / "big.bin", "wb") as f:
            f.write(os.urandom(size))
        try:
            stockade_subject.storage.import_image(image, src)
        finally:
            shutil.rmtree(src, ignore_errors=True)
        insts = []
        try:
            first = create(stockade_subject, stockade_subject.spec(unique("cow"), ["/bin/true"], image=image))
            insts.append(first)
            path = first.context().rootfs
            assert path is not None
            st = os.statvfs(path.path)
            before = st.f_bfree * st.f_frsize
            for _ in range(3):
                insts.append(
                    create(stockade_subject, stockade_subject.spec(unique("cow"), ["/bin/true"], image=image))
                )
            st = os.statvfs(path.path)
            used = before - st.f_bfree * st.f_frsize
            note(request, f"3 clones of a {size // MIB} MiB image took {used / MIB:.1f} MiB")
            assert used < 1.5 * size, (
                f"3 clones of a {size // MIB} MiB image took {used / MIB:.1f} MiB: copies"
            )
        finally:
            for inst in insts:
                inst.delete(force=True)
            stockade_subject.storage.remove_image(image)

    @requires(Feature.SNAPSHOT)
    def test_snapshot_rollback_restores_bytes(self, stockade_subject: Subject) -> None:
        """The whole tree comes back exactly as it was at the snapshot: every path, every
        regular file's bytes, modes, owners and symlink targets; a file made after the
        snapshot is gone, one deleted after it is back."""
        payload = os.urandom(256 * 1024)
        with running(stockade_subject, prefix="snap") as inst:
            r = inst.run(
                ["/bin/sh", "-c", "cat > /root/new.bin; echo extra-line >> /etc/os-release; rm /etc/shadow"],
                input=payload,
            )
            assert r.exit_status == 0, r.stderr
            at_snapshot = _tree(inst)
            md5 = hashlib.md5(payload).hexdigest()
            assert f"{md5}  /root/new.bin" in at_snapshot, "the tree listing misses /root/new.bin"
            inst.stop(timeout=2)
            inst.snapshot("s1")
            inst.start()
            r = inst.run(["/bin/sh", "-c", CHANGES])
            assert r.exit_status == 0, r.stderr
            changed = _tree(inst)
            assert len(set(changed) ^ set(at_snapshot)) >= 8, "the changes after the snapshot did not land"
            inst.stop(timeout=2)
            inst.rollback("s1")
            inst.start()
            after = _tree(inst)
            gone = inst.run(["/bin/sh", "-c", "test -e /root/extra || test -e /etc/shadow"]).exit_status
            back = inst.run(["/bin/sh", "-c", "cat /root/new.bin"]).stdout
        assert gone != 0, "a file made after the snapshot survived the rollback"
        assert back == payload, "a file deleted after the snapshot is not back with its bytes"
        lost = sorted(set(at_snapshot) - set(after))
        extra = sorted(set(after) - set(at_snapshot))
        assert not lost and not extra, (
            f"rollback did not restore the tree: at the snapshot but not after: {lost[:10]}; "
            f"after but not at the snapshot: {extra[:10]}"
        )

    @requires(Feature.SNAPSHOT)
    def test_rollback_to_an_older_snapshot(self, stockade_subject: Subject) -> None:
        """With restore = any_snapshot, a rollback past a newer snapshot works."""
        if stockade_subject.storage.semantics.restore != "any_snapshot":
            not_supported(
                f"storage {stockade_subject.storage.name!r} restores "
                f"{stockade_subject.storage.semantics.restore.replace('_', ' ')}"
            )
        with running(stockade_subject, prefix="snap2") as inst:
            inst.run(["/bin/sh", "-c", "echo one > /root/v"])
            inst.stop(timeout=2)
            inst.snapshot("one")
            inst.start()
            inst.run(["/bin/sh", "-c", "echo two > /root/v"])
            inst.stop(timeout=2)
            inst.snapshot("two")
            inst.rollback("one")
            inst.start()
            got = inst.run(["/bin/cat", "/root/v"]).stdout.decode().strip()
        assert got == "one", f"rollback to the older snapshot gave {got!r}"

    @requires(Feature.DISK_QUOTA)
    def test_disk_quota(self, stockade_subject: Subject, request: pytest.FixtureRequest) -> None:
        """Write until EDQUOT/ENOSPC: the data written stops near the declared size."""
        quota = 32 * MIB
        scope = stockade_subject.storage.semantics.quota_scope
        out = sh(
            stockade_subject,
            f"dd if=/dev/urandom of=/fill bs=1048576 count={2 * quota // MIB} 2>&1; sync; "
            "ls -l /fill; du -sk / 2>/dev/null | tail -1",
            resources={"disk": quota},
        )
        m = re.search(r"^\S+\s+\d+\s+\S+\s+\S+\s+(\d+)\s.*/fill$", out.stdout, re.M)
        assert m, f"could not read what was written: {out.stdout!r}"
        written = int(m.group(1))
        refused = re.search(r"(quota exceeded|No space left)", out.stdout, re.I)
        note(request, f"disk quota {quota // MIB} MiB ({scope}): wrote {written / MIB:.1f} MiB")
        assert refused and written < 2 * quota, (
            f"disk quota {quota // MIB} MiB not enforced: wrote {written} bytes"
        )
        slack = 0.1 * quota + 2 * MIB + (4 * MIB if scope == "referenced" else 0)
        assert abs(written - quota) <= slack, (
            f"disk quota {quota // MIB} MiB ({scope}): stopped at {written / MIB:.1f} MiB"
        )
