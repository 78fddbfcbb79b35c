"""Clone (provision) and release time against image size, per storage backend, against `cp -a`.

Images: one 100 MiB file, one 1 GiB file, 20 000 small files (1 KiB, in 200 dirs).
Backends: overlay (plain: upper on the host root's fs), overlay with quota_fs = btrfs
(disk quota 2 GiB), dir (a full copy), zfs (a clone of the image's @base snapshot, disk
quota 2 GiB as refquota, on a throwaway pool in a sparse file next to the images) and
`cp -a` of the image on the same fs as the yardstick. zfs needs the zfs module, which this
host's kernel lacks: it runs in the VM tier (docs/vm-tier.md), and is left out, with the
reason, where it cannot run. Also times the first write into the big image file (overlay's
copy-up: a full copy on ext4, a reflink on btrfs; zfs: copy-on-write of one block). Runs are
interleaved per backend so drift in load hits all alike; medians. Usage (root):

    .venv/bin/python bench/clone.py [-n 5] [--only overlay,zfs,cp]
    tests/vm/run.sh --zfs -- python3 bench/clone.py -n 3 --only overlay,zfs,cp

``--only`` takes any of: overlay, overlay-btrfs, dir, zfs, cp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

MIB = 1 << 20


def make_images(top: Path) -> dict[str, Path]:
    chunk = b"\xa5" * MIB  # not zeros: no sparse shortcut for cp
    images = {}
    for name, mib in (("100 MiB", 100), ("1 GiB", 1024)):
        d = top / name.replace(" ", "")
        d.mkdir(parents=True)
        with open(d / "blob", "wb") as f:
            for _ in range(mib):
                f.write(chunk)
        images[name] = d
    d = top / "20k-files"
    for i in range(20_000):
        sub = d / f"d{i % 200:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}").write_bytes(chunk[:1024])
    images["20 000 files"] = d
    subprocess.run(["sync"], check=True)
    return images


KEYS = {
    "overlay": "overlay",
    "overlay-btrfs": "overlay + quota (btrfs)",
    "dir": "dir",
    "zfs": "zfs",
    "cp": "cp -a",
}


def zfs_pool(top: Path) -> str | None:
    """A throwaway pool on a sparse file under ``top`` with a parent dataset, or None (and
    why, printed) where ZFS cannot run. The zpool/zfs commands are the bench's set-up only."""
    if not (os.path.exists("/dev/zfs") and shutil.which("zpool")):
        print("zfs: skipped (no zfs module or zpool here: run in the VM tier, docs/vm-tier.md)")
        return None
    name = f"stkbench{uuid.uuid4().hex[:6]}"
    vdev = top / "zpool.img"
    with open(vdev, "wb") as f:
        f.truncate(6 << 30)
    subprocess.run(
        [
            "zpool",
            "create",
            "-o",
            "cachefile=none",
            *("-O", "mountpoint=none", "-O", "canmount=off"),
            *("-O", "compression=off", name, str(vdev)),
        ],
        check=True,
    )
    subprocess.run(["zfs", "create", f"{name}/stockade"], check=True)
    return name


def backends(root: Path, only: set[str], pool: str | None) -> dict[str, Any]:
    from stockade.interfaces import BackendConfig

    def config(sub: str, **options: Any) -> BackendConfig:
        return BackendConfig(root=root / sub, run_dir=root / sub / "run", host_tag="bench", options=options)

    out: dict[str, Any] = {}
    if "overlay" in only or "overlay-btrfs" in only:
        from stockade_overlay.backend import OverlayStorage

        if "overlay" in only:
            out[KEYS["overlay"]] = OverlayStorage(config("overlay"))
        if "overlay-btrfs" in only:
            out[KEYS["overlay-btrfs"]] = OverlayStorage(config("quota", quota_fs="btrfs", quota_fs_size="8G"))
    if "dir" in only:
        from stockade.builtin.dir_storage import DirStorage

        out[KEYS["dir"]] = DirStorage(config("dir"))
    if "zfs" in only and pool:
        from stockade_zfs.storage import ZfsStorage

        out[KEYS["zfs"]] = ZfsStorage(config("zfs", dataset=f"{pool}/stockade"))
    return out


def ctx_for(backend: Any, image: str, disk: int | None) -> Any:
    from stockade.interfaces import InstanceContext
    from stockade.spec import InstanceSpec

    name = f"b{uuid.uuid4().hex[:8]}"
    resources = {"disk": disk} if disk else {}
    spec = InstanceSpec.from_dict({"name": name, "image": image, "resources": resources})
    root = Path(backend.config.root)
    return InstanceContext(
        id=uuid.uuid4().hex[:16],
        name=name,
        spec=spec,
        config=backend.config,
        state_dir=root / "state",
        run_dir=root / "run",
    )


def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--only", default=",".join(KEYS), help=f"comma-separated: {', '.join(KEYS)}")
    args = ap.parse_args()
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    if not only <= set(KEYS):
        raise SystemExit(f"--only: unknown {', '.join(sorted(only - set(KEYS)))} (known: {', '.join(KEYS)})")
    top = Path(tempfile.mkdtemp(prefix="stockade-bench-clone-"))
    pool = None
    try:
        pool = zfs_pool(top) if "zfs" in only else None
        t0 = time.perf_counter()
        images = make_images(top / "src")
        print(f"images made in {fmt(time.perf_counter() - t0)}")
        bs = backends(top, only, pool)
        for b in bs.values():
            probe = b.probe()
            if not probe.ok:
                raise SystemExit(f"{b.name}: {probe.reason}")
            for i, src in enumerate(images.values()):
                t0 = time.perf_counter()
                b.import_image(f"img{i}", src)
                print(f"{b.name}: image {i} imported in {fmt(time.perf_counter() - t0)}")
        clone: dict[tuple[str, str], list[float]] = {}
        release: dict[tuple[str, str], list[float]] = {}
        first_write: dict[str, list[float]] = {}
        for _ in range(args.n):
            for i, (iname, src) in enumerate(images.items()):
                for bname, b in bs.items():
                    disk = 2 << 30 if ("quota" in bname or bname == "zfs") else None
                    ctx = ctx_for(b, f"img{i}", disk)
                    os.sync()  # the previous run's writeback must not land in this one's time
                    t0 = time.perf_counter()
                    rootfs = b.provision(ctx)
                    clone.setdefault((bname, iname), []).append(time.perf_counter() - t0)
                    if iname == "1 GiB" and bname != "dir":
                        blob = Path(rootfs.path) / "blob"

                        def touch(blob: Path = blob) -> None:
                            with open(blob, "r+b") as f:
                                f.write(b"x")

                        first_write.setdefault(bname, []).append(timed(touch))
                    release.setdefault((bname, iname), []).append(timed(partial(b.release, ctx)))
                if "cp" in only:
                    dst = top / "cp-dst"
                    os.sync()
                    clone.setdefault(("cp -a", iname), []).append(
                        timed(partial(subprocess.run, ["cp", "-a", str(src), str(dst)], check=True))
                    )
                    release.setdefault(("cp -a", iname), []).append(timed(partial(shutil.rmtree, dst)))
        names = list(images)
        print(f"\nClone (provision) time, median of {args.n}; release in brackets\n")
        print("| backend | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for bname in [*bs, *(["cp -a"] if "cp" in only else [])]:
            cells = [
                f"{fmt(statistics.median(clone[(bname, i)]))} ({fmt(statistics.median(release[(bname, i)]))})"
                for i in names
            ]
            print(f"| {bname} | " + " | ".join(cells) + " |")
        print("\nClone time at 1 GiB / at 100 MiB (O(1): about 1; a copy: about 10)\n")
        for bname in [*bs, *(["cp -a"] if "cp" in only else [])]:
            ratio = statistics.median(clone[(bname, "1 GiB")]) / statistics.median(clone[(bname, "100 MiB")])
            print(f"- {bname}: {ratio:.2f}")
        print("\nFirst write of 1 byte into the 1 GiB image file, median\n")
        for bname, times in first_write.items():
            print(f"- {bname}: {fmt(statistics.median(times))}")
    finally:
        from stockade.builtin.dir_storage import remove_tree

        if pool:
            subprocess.run(["zpool", "destroy", "-f", pool], check=False)
        remove_tree(top)


if __name__ == "__main__":
    main()
