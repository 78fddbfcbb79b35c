"""Time to give a network namespace a bridged network: stockade (warm process) vs `ip`.

    sudo .venv/bin/python bench/net_attach.py [--runs 20]

Each run: a fresh namespace (a sleeping child that unshared CLONE_NEWNET), then
  stockade: attach_instance_network() — lease + hosts files + veth (peer created inside
            the namespace) + addresses + lo/eth0 up + default routes, v4 and v6;
  netlink:  the kernel part alone (veth + inside configuration), no lease/files;
  ip:       the same kernel work as `ip` commands (what a shell script does).
The "+ netns" rows add making the namespace: for stockade, the child's fork + unshare
(what an instance's PID 1 does); for ip, `ip netns add` (and the rest with `ip -n`).
Medians in ms. Uses its own root in /tmp/stockade-test-bench-*, subnets in 10.213/16.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from net.nethelpers import Netns, create_network, make_ctx
from stockade.interfaces import BackendConfig


def ip_attach(link: str, netns: str, inside: list[str], net: Any, addrs: list[str]) -> list[list[str]]:
    """The `ip` commands doing what attach_instance_network does in the kernel: ``netns`` is
    the namespace as `ip link ... netns` takes it (a pid or a name), ``inside`` the `ip`
    command that reaches into it (nsenter or `ip -n`), so both "ip" rows time the same work."""
    addr4, addr6 = addrs
    return [
        ["ip", "link", "add", link, "mtu", "1500", "type", "veth", "peer", "name", "eth0", "netns", netns],
        ["ip", "link", "set", link, "master", net.bridge, "up"],
        [*inside, "addr", "add", addr4, "dev", "eth0"],
        [*inside, "addr", "add", addr6, "dev", "eth0", "nodad"],
        [*inside, "link", "set", "lo", "up"],
        [*inside, "link", "set", "eth0", "up"],
        [*inside, "route", "add", "default", "via", net.gateways[0]],
        [*inside, "-6", "route", "add", "default", "via", net.gateways[1]],
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    from stockade_linux_ns.net import Networks, attach_instance_network, detach_instance_network, netlink

    root = Path(tempfile.mkdtemp(prefix="stockade-test-bench-"))
    config = BackendConfig(root=root, run_dir=root / "run", host_tag=f"bench{uuid.uuid4().hex[:6]}")
    nets = Networks(config)
    net = create_network(nets, "bench")
    v4, v6 = net.subnets
    p4 = v4.rsplit(".", 1)[0]
    p6 = v6.split("::")[0]
    times: dict[str, list[float]] = {
        "stockade attach": [],
        "netlink only": [],
        "ip commands": [],
        "stockade + netns": [],
        "ip + netns": [],
    }
    try:
        # warm-up: imports, the cached host socket, libnftables
        ns = Netns()
        ctx = make_ctx(config, "warm", "bench")
        attach_instance_network(ctx, ns.path)
        detach_instance_network(ctx)
        ns.close()
        for i in range(args.runs):
            ctx = make_ctx(config, f"b{i}", "bench")
            tn = time.perf_counter()
            ns = Netns()
            t0 = time.perf_counter()
            attach_instance_network(ctx, ns.path)
            t1 = time.perf_counter()
            times["stockade attach"].append(t1 - t0)
            times["stockade + netns"].append(t1 - tn)
            ns.close()  # dropping the namespace removes the pair
            detach_instance_network(ctx)

            ns = Netns()
            link = f"stkbn{i:02d}{uuid.uuid4().hex[:4]}"
            t0 = time.perf_counter()
            netlink.create_instance_link(link, net.bridge, ns.path, 1500, False)
            netlink.configure_inside(ns.path, [f"{p4}.200/24", f"{p6}::200/64"], list(net.gateways))
            times["netlink only"].append(time.perf_counter() - t0)
            ns.close()

            ns = Netns()
            link = f"stkbi{i:02d}{uuid.uuid4().hex[:4]}"
            inside = ["nsenter", f"--net={ns.path}", "ip"]
            cmds = ip_attach(link, str(ns.pid), inside, net, [f"{p4}.201/24", f"{p6}::201/64"])
            t0 = time.perf_counter()
            for c in cmds:
                subprocess.run(c, check=True)
            times["ip commands"].append(time.perf_counter() - t0)
            ns.close()

            name = f"stkbench{uuid.uuid4().hex[:6]}"
            link = f"stkbj{i:02d}{uuid.uuid4().hex[:4]}"
            inside = ["ip", "-n", name]
            cmds = [
                ["ip", "netns", "add", name],
                *ip_attach(link, name, inside, net, [f"{p4}.202/24", f"{p6}::202/64"]),
            ]
            t0 = time.perf_counter()
            try:
                for c in cmds:
                    subprocess.run(c, check=True)
                times["ip + netns"].append(time.perf_counter() - t0)
            finally:
                subprocess.run(["ip", "netns", "del", name], check=False)
    finally:
        nets.delete("bench")
        nets.gc([])
        shutil.rmtree(root, ignore_errors=True)
    print(f"median of {args.runs} runs (ms):")
    for k, v in times.items():
        print(
            f"  {k:16s} {statistics.median(v) * 1e3:7.2f}   (min {min(v) * 1e3:.2f}, max {max(v) * 1e3:.2f})"
        )


if __name__ == "__main__":
    main()
