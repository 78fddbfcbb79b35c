"""Checkpoint/restore and migration timings: stockade (CRIU swrk) vs `runc checkpoint/restore`.

    .venv/bin/python bench/migrate.py [--sizes 64,256] [--repeat 3] [--only pre,post,stop] [-v]

Workload: a static C program that touches N MiB of anonymous memory and keeps a counter.
For each size: stockade checkpoint + restore (to a directory); live migration, pre-copy
(pre-dumps while it runs; needs soft-dirty), post-copy (CRIU lazy pages relayed over the
migration channel) and stop-and-copy, and cold migration, between two host roots over a
socketpair (target in its own thread); and runc's checkpoint + restore of the same program
(runc uses the same CRIU, via --criu). ``--only`` picks rows (stockade, runc, pre, post, stop,
cold); a live method this kernel cannot run, or a missing runc, gives "n/a". Medians in
milliseconds. Needs root and scripts/setup-criu.sh (in the VM tier, Debian's criu:
``tests/vm/run.sh -- python3 bench/migrate.py --sizes 64 --only pre,post,stop``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PROG = r"""
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdio.h>
#include <fcntl.h>
int main(int c, char **v) {
    size_t n = (size_t)atol(v[1]) << 20;
    /* volatile: gcc -O2 drops stores to malloc'd memory that is never read (the first
       version of this benchmark touched ~1 MiB, not N) */
    volatile char *p = malloc(n);
    for (size_t o = 0; o < n; o += 4096) p[o] = 1;
    setsid();
    for (unsigned long i = 1;; i++) {
        for (size_t o = 0; o < n; o += 1 << 20) p[o] = (char)i;  /* stays dirty */
        int fd = open("/tmp/c", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dprintf(fd, "%lu\n", i); close(fd);
        usleep(20000);
    }
}
"""
CRIU = "/opt/stockade-criu/sbin/criu"  # scripts/setup-criu.sh's build: stockade and runc both use it


def build(work: Path) -> Path:
    src = work / "mem.c"
    src.write_text(PROG)
    binary = work / "bin" / "mem"
    binary.parent.mkdir()
    subprocess.run(["gcc", "-O2", "-static", "-o", str(binary), str(src)], check=True)
    return binary.parent


def spec(name: str, bindir: Path, mib: int) -> dict[str, Any]:
    return {
        "name": name,
        "process": {"args": ["/opt/bench/mem", str(mib)]},
        "mounts": [{"source": str(bindir), "target": "/opt/bench", "type": "bind", "options": ["ro"]}],
    }


def start(host: Any, name: str, bindir: Path, mib: int, log: Path) -> Any:
    from stockade.interfaces import Stdio

    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
    nul = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        inst = host.create(spec(name, bindir, mib), stdio=Stdio(nul, out, out))
    finally:
        os.close(out)
        os.close(nul)
    inst.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the memory is touched before the counter starts
        r = inst.run(["cat", "/tmp/c"])
        if r.exit_status == 0 and r.stdout.strip():
            break
        time.sleep(0.1)
    return inst


def cleanup(host: Any, root: Path) -> None:
    from stockade.linux import umount_tree

    for i in host.instances():
        try:
            i.delete(force=True)
        except Exception as e:
            print("cleanup:", e)
    host.gc()
    umount_tree(str(root))
    shutil.rmtree(root, ignore_errors=True)


def bench_stockade(bindir: Path, mib: int, work: Path) -> dict[str, float]:
    from stockade import Host, checkpointing

    root = Path(tempfile.mkdtemp(prefix="stockade-test-bench-"))
    h = Host(root)
    try:
        inst = start(h, "b", bindir, mib, work / "b.log")
        ck = work / f"ck-{mib}-{time.monotonic_ns()}"
        t = time.monotonic()
        checkpointing.checkpoint(inst, ck)
        t_ck = time.monotonic() - t
        inst.delete(force=True)
        t = time.monotonic()
        checkpointing.restore(h, ck, name="b2")
        t_rs = time.monotonic() - t
        shutil.rmtree(ck)
        return {"checkpoint": t_ck, "restore": t_rs}
    finally:
        cleanup(h, root)


def bench_migrate(  # noqa: PLR0917
    bindir: Path, mib: int, work: Path, mode: str, method: str = "auto", verbose: bool = False
) -> dict[str, float]:
    from stockade import Host, migrate

    r1 = Path(tempfile.mkdtemp(prefix="stockade-test-bench-"))
    r2 = Path(tempfile.mkdtemp(prefix="stockade-test-bench-"))
    h1, h2 = Host(r1), Host(r2)
    try:
        inst = start(h1, "m", bindir, mib, work / "m.log")
        a, b = socket.socketpair()
        res: dict[str, Any] = {}

        def target() -> None:
            try:
                res["inst"] = migrate.serve(h2, migrate.Channel.of_socket(b))
            except Exception as e:
                res["err"] = e

        th = threading.Thread(target=target)
        th.start()
        rep = migrate.migrate(inst, migrate.Channel.of_socket(a), mode=mode, method=method, stop_timeout=0.5)  # type: ignore[arg-type]
        th.join()
        if "err" in res:
            raise res["err"]
        moved = res["inst"]
        for _ in range(20 if mode == "live" else 0):  # the counter file is rewritten every 20 ms
            r = moved.run(["cat", "/tmp/c"])
            if r.exit_status == 0 and r.stdout.strip():
                assert int(r.stdout) > 1, r  # it goes on counting on the target
                break
            time.sleep(0.01)
        if mode == "live" and method != "auto":
            assert rep.method == method, rep
        if verbose:
            steps = " ".join(f"{k}={v * 1000:.0f}" for k, v in rep.steps.items())
            sizes = f"pages {rep.pages_bytes >> 10} KiB, images {rep.images_bytes >> 10} KiB"
            print(f"  {rep.summary()}; {sizes}; {steps}")
        return {"downtime": rep.downtime_s, "total": rep.total_s, "bytes": rep.bytes_moved}
    finally:
        cleanup(h1, r1)
        cleanup(h2, r2)


def bench_runc(bindir: Path, mib: int, work: Path) -> dict[str, float]:
    from stockade.images import build_default_image

    bundle = work / f"runc-{mib}-{time.monotonic_ns()}"
    rootfs = bundle / "rootfs"
    build_default_image(rootfs)
    (rootfs / "opt" / "bench").mkdir(parents=True, exist_ok=True)
    shutil.copy(bindir / "mem", rootfs / "opt" / "bench" / "mem")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["args"] = ["/opt/bench/mem", str(mib)]
    cfg["process"]["terminal"] = False
    cfg["root"]["readonly"] = False
    # No network namespace of its own: CRIU locks the network only in a namespace of the
    # container's, with iptables by default (this host has no iptables-restore), and the
    # one other way, `network-lock nftables` in an org.criu.config file, crashed CRIU 4.1.1
    # (config.c:1059 strcmp()s argv[optind], NULL in RPC mode; 4.2.1 checks argv there, not
    # tried again). The workload has no sockets.
    cfg["linux"]["namespaces"] = [n for n in cfg["linux"]["namespaces"] if n["type"] != "network"]
    (bundle / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ)
    cid = f"stockade-bench-{os.getpid()}-{mib}"
    rroot = str(work / "runc-root")
    runc = ["runc", "--root", rroot, "--criu", CRIU]
    out: dict[str, float] = {}
    try:
        subprocess.run(
            [*runc, "run", "-d", cid],
            cwd=bundle,
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1 + mib / 256)
        img = bundle / "img"
        t = time.monotonic()
        subprocess.run([*runc, "checkpoint", "--image-path", str(img), cid], env=env, check=True)
        out["checkpoint"] = time.monotonic() - t
        if os.environ.get("BENCH_DEBUG"):
            print((img / "dump.log").read_text()[-2000:] if (img / "dump.log").exists() else "no log")
        t = time.monotonic()
        subprocess.run(
            [*runc, "restore", "-d", "--image-path", str(img), cid],
            cwd=bundle,
            env=env,
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out["restore"] = time.monotonic() - t
    finally:
        subprocess.run([*runc, "delete", "-f", cid], env=env, check=False, capture_output=True)
        shutil.rmtree(bundle, ignore_errors=True)
    return out


# row -> (heading, fields)
ROWS = {
    "stockade": ("stockade", ("checkpoint", "restore")),
    "runc": ("runc", ("checkpoint", "restore")),
    "pre": ("pre-copy", ("downtime", "total")),
    "post": ("post-copy", ("downtime", "total")),
    "stop": ("stop-and-copy", ("downtime", "total")),
    "cold": ("cold", ("downtime", "total")),
}
LIVE = {"pre": ("pre-copy", "precopy"), "post": ("post-copy", "postcopy"), "stop": ("stop-and-copy", "")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,256")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", default=",".join(ROWS), help="rows: " + ",".join(ROWS))
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per migration, with its steps")
    args = ap.parse_args()
    only = [k for k in args.only.split(",") if k]
    if unknown := [k for k in only if k not in ROWS]:
        ap.error(f"--only: unknown rows {unknown}; use {','.join(ROWS)}")
    # stockade takes $STOCKADE_CRIU first: the same binary as runc's --criu, whatever else is on PATH
    os.environ["STOCKADE_CRIU"] = CRIU
    from stockade_linux_ns.checkpoint import CriuCheckpointer

    print("criu:", CriuCheckpointer().version(), CRIU)
    why_not = CriuCheckpointer().live_problems()
    for k in only:
        cap = LIVE.get(k, ("", ""))[1]
        if cap and why_not[cap]:
            print(f"{ROWS[k][0]}: n/a ({why_not[cap]})")
    work = Path(tempfile.mkdtemp(prefix="stockade-bench-"))
    try:
        bindir = build(work)
        rows = []
        for mib in [int(s) for s in args.sizes.split(",")]:
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in only}
            for rep in range(args.repeat):
                # Alternated run by run, and the page cache written back first: a checkpoint is
                # mostly criu writing pages, and the last run's images still being written back
                # (or discarded) made single runs swing 200-750 ms.
                for k in only if rep % 2 == 0 else only[::-1]:
                    os.sync()
                    if k == "stockade":
                        runs[k].append(bench_stockade(bindir, mib, work))
                    elif k == "runc":
                        try:
                            runs[k].append(bench_runc(bindir, mib, work))
                        except (subprocess.CalledProcessError, FileNotFoundError) as e:
                            print(f"runc failed: {e}")
                    elif k == "cold":
                        runs[k].append(bench_migrate(bindir, mib, work, "cold", verbose=args.verbose))
                    elif not (LIVE[k][1] and why_not[LIVE[k][1]]):
                        runs[k].append(bench_migrate(bindir, mib, work, "live", LIVE[k][0], args.verbose))
                    if args.verbose and k in ("stockade", "runc") and runs[k]:
                        vals = " ".join(f"{f}={v * 1000:.0f}" for f, v in runs[k][-1].items())
                        print(f"  {k} {mib} MiB: {vals}")

            def med(k: str, f: str, runs: dict[str, list[dict[str, float]]] = runs) -> str:
                v = [r[f] for r in runs[k] if f in r]
                return f"{statistics.median(v) * 1000:.0f}" if v else "n/a"

            rows.append([str(mib)] + [med(k, f) for k in only for f in ROWS[k][1]])
        heads = ["MiB"] + [f"{ROWS[k][0]} {f}" for k in only for f in ROWS[k][1]]
        print("| " + " | ".join(heads) + " |")
        print("|" + "---|" * len(heads))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
