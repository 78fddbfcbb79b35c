"""`stockade run --rm true` against `runc run`, `crun run` and bubblewrap on the same rootfs.

Alternates the runtimes run by run (so drift in machine load hits all alike), N runs each,
and prints medians and ratios as a Markdown table. Usage (root):

    .venv/bin/python bench/run_true.py [-n 20] [--api]

--api adds the warm-process Python API (Host.run) as a row.

The `stockade run --rm` row is what a user sees while the root's supervisor is warm (any
stockade command in the last STOCKADE_SUPERVISOR_IDLE seconds, 5 by default); the
"(cold: no supervisor)" row stops it before each run, so it includes starting one.

crun 1.8 refuses this machine's hybrid cgroup layout ("cgroups in hybrid mode not
supported"), so it runs in a private mount namespace with the cgroup v2 mount hidden
(then it uses the v1 controllers like runc and stockade); the cost of that wrapper alone is
its own row, to subtract.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HIDE_V2 = [
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"',
    "sh",
]


def timed(cmd: list[str], **kw: object) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return dt


def cold(sroot: Path, stockade: list[str]) -> float:
    from stockade.supervisor_client import shutdown

    sock = sroot / "run" / "supervisor.sock"
    shutdown(str(sroot / "run"))
    while sock.exists():
        time.sleep(0.01)
    return timed([*stockade, "run", "--rm", "--", "true"])


def oci_bundle(base: Path, rootfs: Path) -> Path:
    bundle = base / "bundle"
    bundle.mkdir()
    (bundle / "rootfs").symlink_to(rootfs)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    ap.add_argument("--api", action="store_true")
    ap.add_argument("--cold", action="store_true", help="add the cold-supervisor row")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    from stockade.images import build_default_image

    base = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    sroot = base / "stockade-root"
    closers: list[Callable[[], None]] = []
    try:
        rootfs = build_default_image(base / "rootfs")
        bundle = oci_bundle(base, rootfs)
        stockade = [str(Path(sys.executable).parent / "stockade"), "--root", str(sroot)]
        timed([*stockade, "run", "--rm", "--", "true"])  # imports the image once
        runners: dict[str, Callable[[int], float]] = {
            "stockade run --rm": lambda i: timed([*stockade, "run", "--rm", "--", "true"]),
            **(
                {"stockade run --rm (cold: no supervisor)": lambda i: cold(sroot, stockade)}
                if args.cold
                else {}
            ),
            "runc run": lambda i: timed(
                ["runc", "--root", str(base / "runc"), "run", "-b", str(bundle), f"b{i}"]
            ),
            "crun run": lambda i: timed(
                [*HIDE_V2, "crun", "--root", str(base / "crun"), "run", "-b", str(bundle), f"b{i}"]
            ),
            "(crun's wrapper alone)": lambda i: timed([*HIDE_V2, "true"]),
            "bwrap": lambda i: timed(
                [
                    "bwrap",
                    "--ro-bind",
                    str(rootfs),
                    "/",
                    "--proc",
                    "/proc",
                    "--dev",
                    "/dev",
                    "--unshare-all",
                    "--die-with-parent",
                    "/bin/true",
                ]
            ),
        }
        if args.api:
            from stockade import Host

            # warm: a long-lived process keeps spare namespaces and the root's cgroup
            # parents between instances (closed below)
            host = Host(sroot, warm=True)
            closers.append(host.close)

            def api(i: int) -> float:
                t = time.perf_counter()
                host.run({"name": f"api{i}", "process": {"args": ["true"]}})
                return time.perf_counter() - t

            runners["Host.run (warm API)"] = api
        results: dict[str, list[float]] = {k: [] for k in runners}
        for i in range(args.n):
            for name, fn in runners.items():
                results[name].append(fn(i))
        runc = statistics.median(results["runc run"])
        print(f"| runtime | median ms | vs runc | (n={args.n}, alternating) |")
        print("|---|---:|---:|---|")
        for name, vals in results.items():
            med = statistics.median(vals)
            print(f"| {name} | {med * 1000:.1f} | {med / runc:.2f}x | |")
    finally:
        from stockade.linux import umount_tree
        from stockade.supervisor_client import shutdown

        for close in closers:
            close()
        shutdown(str(sroot / "run"))  # it releases what it kept warm as it exits
        umount_tree(str(base))
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
