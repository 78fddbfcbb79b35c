"""Clone (provision) and release time against image size, per storage backend, against `cp -a`.

Images: one 100 MiB file, one 1 GiB file, 20 000 small files (1 KiB, in 200 dirs).
Backends: overlay (plain: upper on the host root's fs), overlay with quota_fs = btrfs
(disk quota 2 GiB), dir (a full copy), and `cp -a` of the image on the host fs as the
yardstick. zfs only runs in the VM tier (docs/vm-tier.md) and is skipped here. Also times
the first write into the big image file (overlay's copy-up: a full copy on ext4, a reflink
on btrfs). Runs are interleaved per backend so drift in load hits all alike; medians.
Usage (root):

    .venv/bin/python bench/clone.py [-n 5] [--keep-going]
"""

from __future__ import annotations

import argparse
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


def backends(root: Path) -> dict[str, Any]:
    from stockade.builtin.dir_storage import DirStorage
    from stockade.interfaces import BackendConfig
    from stockade_overlay.backend import OverlayStorage

    def config(sub: str, **options: Any) -> BackendConfig:
        return BackendConfig(root=root / sub, run_dir=root / sub / "run", host_tag="bench", options=options)

    return {
        "overlay": OverlayStorage(config("overlay")),
        "overlay + quota (btrfs)": OverlayStorage(config("quota", quota_fs="btrfs", quota_fs_size="8G")),
        "dir": DirStorage(config("dir")),
    }


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
    args = ap.parse_args()
    top = Path(tempfile.mkdtemp(prefix="stockade-bench-clone-"))
    try:
        images = make_images(top / "src")
        bs = backends(top)
        for b in bs.values():
            probe = b.probe()
            if not probe.ok:
                raise SystemExit(f"{b.name}: {probe.reason}")
            for i, src in enumerate(images.values()):
                b.import_image(f"img{i}", src)
        clone: dict[tuple[str, str], list[float]] = {}
        release: dict[tuple[str, str], list[float]] = {}
        first_write: dict[str, list[float]] = {}
        for _ in range(args.n):
            for i, (iname, src) in enumerate(images.items()):
                for bname, b in bs.items():
                    disk = 2 << 30 if "quota" in bname else None
                    ctx = ctx_for(b, f"img{i}", disk)
                    clone.setdefault((bname, iname), []).append(timed(partial(b.provision, ctx)))
                    if iname == "1 GiB" and bname.startswith("overlay"):
                        blob = Path(ctx.bag("storage")["dir"]) / "merged" / "blob"

                        def touch(blob: Path = blob) -> None:
                            with open(blob, "r+b") as f:
                                f.write(b"x")

                        first_write.setdefault(bname, []).append(timed(touch))
                    release.setdefault((bname, iname), []).append(timed(partial(b.release, ctx)))
                dst = top / "cp-dst"
                clone.setdefault(("cp -a", iname), []).append(
                    timed(partial(subprocess.run, ["cp", "-a", str(src), str(dst)], check=True))
                )
                release.setdefault(("cp -a", iname), []).append(timed(partial(shutil.rmtree, dst)))
        names = list(images)
        print(f"Clone (provision) time, median of {args.n}; release in brackets\n")
        print("| backend | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for bname in [*bs, "cp -a"]:
            cells = [
                f"{fmt(statistics.median(clone[(bname, i)]))} ({fmt(statistics.median(release[(bname, i)]))})"
                for i in names
            ]
            print(f"| {bname} | " + " | ".join(cells) + " |")
        print("\nFirst write of 1 byte into the 1 GiB image file (overlay copy-up), median\n")
        for bname, times in first_write.items():
            print(f"- {bname}: {fmt(statistics.median(times))}")
        print("- zfs: skipped (only in the VM tier, docs/vm-tier.md)")
    finally:
        from stockade.builtin.dir_storage import remove_tree

        remove_tree(top)


if __name__ == "__main__":
    main()
