"""The network layer against the real kernel: reachability and isolation, leases, cleanup."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from stockade.errors import SpecError, StateConflict
from stockade.interfaces import BackendConfig, InstanceContext

from .nethelpers import Netns, create_network, hosts_lookup, ip_links, make_ctx, nft_tables

pytestmark = pytest.mark.timeout(60)


class Env:
    def __init__(self, config: BackendConfig, netns: Callable[[], Netns]) -> None:
        from stockade_linux_ns.net import Networks

        self.config = config
        self.nets = Networks(config)
        self.netns = netns
        self.ctxs: list[InstanceContext] = []
        self.networks: list[str] = []

    def network(self, isolated: bool = False) -> Any:
        info = create_network(self.nets, f"t-{uuid.uuid4().hex[:8]}", isolated)
        self.networks.append(info.name)
        return info

    def instance(self, name: str, network: str | None, **net: Any) -> tuple[InstanceContext, Netns]:
        from stockade_linux_ns.net import attach_instance_network

        ns = self.netns()
        ctx = make_ctx(self.config, name, network, **net)
        self.ctxs.append(ctx)
        attach_instance_network(ctx, ns.path)
        return ctx, ns

    def close(self) -> None:
        from stockade_linux_ns.net import detach_instance_network

        for ctx in self.ctxs:
            detach_instance_network(ctx)
        for name in self.networks:
            with contextlib.suppress(Exception):
                self.nets.delete(name)


@pytest.fixture
def env(net_config: BackendConfig, netns: Callable[[], Netns]) -> Iterator[Env]:
    e = Env(net_config, netns)
    try:
        yield e
    finally:
        e.close()


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_same_network_tcp_udp_by_name(env: Env) -> None:
    net = env.network()
    a, ns_a = env.instance("alpha", net.name)
    b, ns_b = env.instance("beta", net.name)
    hosts_a = a.run_dir / "hosts"
    # alpha's file was written before beta existed and updated in place when beta joined
    addr_b = hosts_lookup(hosts_a, "beta")
    addr_b6 = hosts_lookup(hosts_a, "beta", 6)
    assert hosts_lookup(b.run_dir / "hosts", "alpha") == a.data["network"]["ipv4"]
    assert "localhost" in hosts_a.read_text()
    assert b.data["network"]["ipv4"] == addr_b and b.data["network"]["bridge"] == net.bridge
    inside = ns_b.run("ip", "-o", "addr", "show", "eth0")
    assert addr_b in inside and addr_b6 in inside
    assert "default via" in ns_b.run("ip", "route")
    assert "default via" in ns_b.run("ip", "-6", "route")
    for proto, addr in (("tcp", addr_b), ("udp", addr_b), ("tcp", addr_b6)):
        srv = ns_b.serve(proto, "::" if ":" in addr else "0.0.0.0", 7001)
        try:
            assert ns_a.call(proto, addr, 7001) == "pong:hi"
        finally:
            srv.kill()
            srv.wait()
    assert (a.run_dir / "resolv.conf").exists()
    info = env.nets.inspect(net.name)
    assert {x["name"] for x in info.instances} == {"alpha", "beta"}


@contextlib.contextmanager
def _forwarding(*links: str) -> Iterator[None]:
    """IPv4 forwarding on for packets arriving on ``links`` while the block runs: the kernel
    would then route between them, so what stops a packet must be the firewall."""
    from stockade.testing.netcheck import ipv4_forwarding

    with ipv4_forwarding(list(links)) as on:
        assert on == list(links), f"forwarding could not be turned on for all of {links}: {on}"
        yield


def test_other_network_is_unreachable_even_with_forwarding(env: Env) -> None:
    from stockade_linux_ns.net import firewall

    n1, n2 = env.network(), env.network()
    _, ns_a = env.instance("left", n1.name)
    c, ns_c = env.instance("right", n2.name)
    before = firewall.counters(env.config.host_tag)
    with _forwarding(n1.bridge, n2.bridge):
        srv = ns_c.serve("tcp", "0.0.0.0", 7002)
        try:
            out = ns_a.call("tcp", c.data["network"]["ipv4"], 7002, timeout=1.0)
        finally:
            srv.kill()
            srv.wait()
    assert out.startswith("FAIL"), out
    after = firewall.counters(env.config.host_tag)
    assert after["forward-in-drop"] > before["forward-in-drop"]


def test_isolated_network_blocks_peers_not_host(env: Env) -> None:
    net = env.network(isolated=True)
    a, ns_a = env.instance("iso-a", net.name)
    b, ns_b = env.instance("iso-b", net.name)
    srv = ns_b.serve("tcp", "0.0.0.0", 7003)
    try:
        assert ns_a.call("tcp", b.data["network"]["ipv4"], 7003, timeout=1.0).startswith("FAIL")
        with socket.create_connection((b.data["network"]["ipv4"], 7003), timeout=3) as s:
            s.sendall(b"host")  # the host (the bridge itself) still reaches an isolated port
            assert s.recv(100) == b"pong:host"
    finally:
        srv.kill()
        srv.wait()
    assert (
        "isolated on"
        in subprocess.run(
            ["ip", "-d", "link", "show", a.data["network"]["host_link"]], capture_output=True, text=True
        ).stdout
    )


def test_published_ports_from_host_loopback(env: Env) -> None:
    net = env.network()
    tport, uport = _free_port(), _free_port(socket.SOCK_DGRAM)
    _, ns = env.instance("web", net.name, publish=[f"{tport}:8080/tcp", f"{uport}:8081/udp"])
    t = ns.serve("tcp", "0.0.0.0", 8080)
    u = ns.serve("udp", "0.0.0.0", 8081)
    try:
        with socket.create_connection(("127.0.0.1", tport), timeout=3) as s:
            s.sendall(b"tcp")
            assert s.recv(100) == b"pong:tcp"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(b"udp", ("127.0.0.1", uport))
            assert s.recvfrom(100)[0] == b"pong:udp"
    finally:
        for p in (t, u):
            p.kill()
            p.wait()
    # a second instance cannot take the same host port
    with pytest.raises(StateConflict):
        env.instance("web2", net.name, publish=[f"{tport}:80/tcp"])


def test_host_listeners_unreachable_from_inside(env: Env) -> None:
    from stockade_linux_ns.net import firewall

    net = env.network()
    _, ns = env.instance("curious", net.name)
    gw = net.gateways[0]
    listeners = []
    for addr in ("127.0.0.1", gw):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 0))
        s.listen(4)
        listeners.append(s)
    try:
        before = firewall.counters(env.config.host_tag)["input-drop"]
        out_gw = ns.call("tcp", gw, listeners[1].getsockname()[1], timeout=1.0)
        out_lo = ns.call("tcp", "127.0.0.1", listeners[0].getsockname()[1], timeout=1.0)
        assert out_gw.startswith("FAIL") and "timed out" in out_gw, out_gw
        assert out_lo.startswith("FAIL"), out_lo  # the instance's own loopback: refused
        assert firewall.counters(env.config.host_tag)["input-drop"] > before
    finally:
        for s in listeners:
            s.close()


def test_static_addresses_and_collisions(env: Env) -> None:
    net = env.network()
    base = net.subnets[0].rsplit(".", 1)[0]
    ctx, ns = env.instance("fixed", net.name, ipv4=f"{base}.77")
    assert ctx.data["network"]["ipv4"] == f"{base}.77"
    assert f"{base}.77/24" in ns.run("ip", "-o", "addr")
    with pytest.raises(SpecError, match="already leased"):
        env.instance("clash", net.name, ipv4=f"{base}.77")
    with pytest.raises(SpecError, match="not in the network"):
        env.instance("outside", net.name, ipv4="10.214.0.5")
    # failed attaches leave no lease and no link behind
    assert [x["name"] for x in env.nets.inspect(net.name).instances] == ["fixed"]


def _attach_in_child(ctx: InstanceContext, path: str, go: int, out: int) -> None:
    from stockade_linux_ns.net import attach_instance_network

    os.read(go, 1)
    try:
        attach_instance_network(ctx, path)
        os.write(out, (ctx.data["network"]["ipv4"] + "\n").encode())
    except Exception as e:
        os.write(out, f"ERR {e}\n".encode())


def test_concurrent_attaches_get_distinct_addresses(env: Env) -> None:
    net = env.network()
    n = 6
    nss = [env.netns() for _ in range(n)]
    ctxs = [make_ctx(env.config, f"par{i}", net.name) for i in range(n)]
    env.ctxs.extend(ctxs)
    go_r, go_w = os.pipe()
    out_r, out_w = os.pipe()
    pids = []
    for ctx, ns in zip(ctxs, nss, strict=True):
        pid = os.fork()
        if pid == 0:
            try:
                _attach_in_child(ctx, ns.path, go_r, out_w)
            finally:
                os._exit(0)
        pids.append(pid)
    os.write(go_w, b"x" * n)  # release them together
    for pid in pids:
        os.waitpid(pid, 0)
    os.close(out_w)
    with os.fdopen(out_r) as f:
        results = f.read().split()
    os.close(go_r)
    os.close(go_w)
    assert not [r for r in results if r == "ERR"], results
    assert len(results) == n and len(set(results)) == n, results
    leases = env.nets.inspect(net.name).instances
    assert sorted(x["ipv4"] for x in leases) == sorted(results)
    for ctx in ctxs:  # the children recorded into their copy of ctx: give the parent's the record
        ctx.data["network"] = {"network": net.name}


def test_delete_refused_while_in_use_then_nothing_left(
    net_config: BackendConfig, netns: Callable[[], Netns]
) -> None:
    from stockade_linux_ns.net import Networks, attach_instance_network, detach_instance_network
    from stockade_linux_ns.net.names import link_prefix, table_name

    # a root of its own, so "nothing left" covers the table too
    config = BackendConfig(
        root=net_config.root / "solo",
        run_dir=net_config.root / "solo-run",
        host_tag=net_config.host_tag + "s",
    )
    nets = Networks(config)
    net = create_network(nets, "solo")
    ctx = make_ctx(config, "lonely", "solo", publish=[f"{_free_port()}:80"])
    attach_instance_network(ctx, netns().path)
    try:
        with pytest.raises(StateConflict, match="in use by lonely"):
            nets.delete("solo")
        assert table_name(config.host_tag) in nft_tables()
    finally:
        detach_instance_network(ctx)
        detach_instance_network(ctx)  # idempotent
    assert "network" not in ctx.data
    nets.delete("solo")
    assert nets.gc([]) == []
    assert ip_links(link_prefix(config.host_tag)) == []
    assert table_name(config.host_tag) not in nft_tables()
    assert not list((config.root / "networks").glob("*.json"))
    assert net.bridge not in ip_links("stk")


def test_gc_removes_leftovers(net_config: BackendConfig, netns: Callable[[], Netns]) -> None:
    from stockade_linux_ns.net import Networks, attach_instance_network
    from stockade_linux_ns.net.names import link_prefix, table_name

    config = BackendConfig(
        root=net_config.root / "gc",
        run_dir=net_config.root / "gc-run",
        host_tag=net_config.host_tag + "g",
        options={},
    )
    nets = Networks(config)
    create_network(nets, "crashy")
    ns = netns()
    ctx = make_ctx(config, "ghost", "crashy", publish=[f"{_free_port()}:80"])
    attach_instance_network(ctx, ns.path)  # then "crash": nobody detaches
    kept = make_ctx(config, "keeper", "crashy")
    attach_instance_network(kept, netns().path)
    removed = nets.gc(["keeper"])
    assert any("lease crashy/ghost" in r for r in removed), removed
    assert any(ctx.data["network"]["host_link"] in r for r in removed), removed
    assert [x["name"] for x in nets.inspect("crashy").instances] == ["keeper"]
    assert "ghost" not in (kept.run_dir / "hosts").read_text()
    # the network definition vanishes behind gc's back (a half-done delete): bridge and table go
    (config.root / "networks" / "crashy.json").unlink()
    (config.root / "networks" / "crashy.leases.json").unlink()
    removed = nets.gc([])
    assert any("bridge" in r for r in removed) and any("table" in r for r in removed), removed
    assert ip_links(link_prefix(config.host_tag)) == []
    assert table_name(config.host_tag) not in nft_tables()


def test_default_network_created_on_demand(net_config: BackendConfig, netns: Callable[[], Netns]) -> None:
    from stockade_linux_ns.net import Networks, attach_instance_network, detach_instance_network

    from .nethelpers import free_subnets

    # the real default (10.88.0.0/16) may be in use by another root on this host: a test range
    config = BackendConfig(
        root=net_config.root / "dflt",
        run_dir=net_config.root / "dflt-run",
        host_tag=net_config.host_tag + "d",
        options={"default_subnets": list(free_subnets())},
    )
    nets = Networks(config)
    ctx = make_ctx(config, "plain", None, dns=["10.213.0.53"])
    try:
        attach_instance_network(ctx, netns().path)
        assert ctx.data["network"]["network"] == "stockade0"
        assert [i.name for i in nets.list()] == ["stockade0"]
        assert (ctx.run_dir / "resolv.conf").read_text() == "nameserver 10.213.0.53\n"
    finally:
        detach_instance_network(ctx)
        nets.delete("stockade0")
    assert nets.gc([]) == []


def _probe(ns: Netns, *args: str) -> str:
    from .nethelpers import PROBE

    return ns.run(sys.executable, "-I", "-S", PROBE, *args).strip()


def _rx_packets(ns: Netns, ifname: str) -> int:
    for line in ns.run("cat", "/proc/self/net/dev").splitlines():
        name, _, rest = line.partition(":")
        if name.strip() == ifname:
            return int(rest.split()[1])
    raise KeyError(ifname)


def test_other_network_unreachable_both_ways_v4_v6(env: Env) -> None:
    from stockade_linux_ns.net import firewall

    n1, n2 = env.network(), env.network()
    a, ns_a = env.instance("east", n1.name)
    b, ns_b = env.instance("west", n2.name)
    before = firewall.counters(env.config.host_tag)
    servers = [ns.serve("tcp", "::", 7010) for ns in (ns_a, ns_b)]
    try:
        with _forwarding(n1.bridge, n2.bridge):
            outs = {
                f"{src}->{dst.name} v{v}": src_ns.call(
                    "tcp", dst.data["network"][f"ipv{v}"], 7010, timeout=1.0
                )
                for src, src_ns, dst in (("east", ns_a, b), ("west", ns_b, a))
                for v in (4, 6)
            }
    finally:
        for srv in servers:
            srv.kill()
            srv.wait()
    assert all(o.startswith("FAIL") for o in outs.values()), outs
    after = firewall.counters(env.config.host_tag)
    assert after["forward-in-drop"] >= before["forward-in-drop"] + 2, (before, after)
    # and inside one network the same servers answer, v4 and v6 (the test can fail)
    c, ns_c = env.instance("east2", n1.name)
    srv = ns_c.serve("tcp", "::", 7011)
    try:
        for v in (4, 6):
            assert ns_a.call("tcp", c.data["network"][f"ipv{v}"], 7011) == "pong:hi"
    finally:
        srv.kill()
        srv.wait()


@contextlib.contextmanager
def _host_dummy(config: BackendConfig, cidrs: list[str]) -> Iterator[str]:
    """A link of this test root on the host holding ``cidrs``: 'host addresses on another
    interface' (an empty bridge: this kernel has no dummy driver; named with the root's
    prefix, so the session's gc finds it too)."""
    from stockade_linux_ns.net.names import link_prefix

    name = link_prefix(config.host_tag) + "x" + uuid.uuid4().hex[:6]
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
    try:
        for c in cidrs:
            subprocess.run(["ip", "addr", "add", c, "dev", name, "nodad"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)


def test_no_host_address_reachable_v4_v6(env: Env) -> None:
    """Host listeners on every kind of host address: host loopback (v4, v6), the
    network's gateways, another network's gateways, another interface's addresses."""
    from stockade_linux_ns.net import firewall

    from .nethelpers import free_subnets

    net, other = env.network(), env.network()
    _, ns = env.instance("nosy", net.name)
    d4, d6 = free_subnets()
    dummy4 = d4.rsplit(".", 1)[0] + ".9"
    dummy6 = d6.split("::")[0] + "::9"
    with _host_dummy(env.config, [f"{dummy4}/24", f"{dummy6}/64"]):
        targets = [*net.gateways, *other.gateways, dummy4, dummy6]
        listeners = []
        for addr in targets:
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, 0))
            s.listen(4)
            s.setblocking(False)
            listeners.append(s)
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        u.bind(("::", 0))  # every host address, v4-mapped too
        u.setblocking(False)
        try:
            before = firewall.counters(env.config.host_tag)["input-drop"]
            outs = {
                a: ns.call("tcp", a, s.getsockname()[1], timeout=0.7)
                for a, s in zip(targets, listeners, strict=True)
            }
            outs["udp"] = ns.call("udp", net.gateways[0], u.getsockname()[1], timeout=0.7)
            outs["udp6"] = ns.call("udp", dummy6, u.getsockname()[1], timeout=0.7)
            # the instance's own loopback is its own: refused, never the host's
            outs["lo4"] = ns.call("tcp", "127.0.0.1", listeners[0].getsockname()[1], timeout=0.7)
            outs["lo6"] = ns.call("tcp", "::1", listeners[0].getsockname()[1], timeout=0.7)
            assert all(o.startswith("FAIL") for o in outs.values()), outs
            for a in targets:
                assert "timed out" in outs[a], (a, outs[a])  # dropped, not refused: never reached a socket
            for s in listeners:
                with pytest.raises(BlockingIOError):
                    s.accept()
            with pytest.raises(BlockingIOError):
                u.recvfrom(100)
            assert firewall.counters(env.config.host_tag)["input-drop"] >= before + len(targets)
        finally:
            u.close()
            for s in listeners:
                s.close()


def test_nothing_leaves_through_an_uplink(env: Env, netns: Callable[[], Netns]) -> None:
    """A stand-in uplink (veth to a namespace of this test playing 'the outside'), with
    forwarding on: an instance's packets to it are dropped, and nothing is NATed."""
    from stockade_linux_ns.net import firewall
    from stockade_linux_ns.net.names import link_prefix
    from stockade_linux_ns.net.nft import nft

    from .nethelpers import free_subnets

    net = env.network()
    _, ns = env.instance("leaky", net.name)
    outside = netns()
    up4 = free_subnets()[0].rsplit(".", 1)[0]
    uplink = link_prefix(env.config.host_tag) + "u" + uuid.uuid4().hex[:6]
    subprocess.run(
        ["ip", "link", "add", uplink, "type", "veth", "peer", "name", "eth0", "netns", str(outside.pid)],
        check=True,
    )
    try:
        subprocess.run(["ip", "addr", "add", f"{up4}.1/24", "dev", uplink], check=True)
        subprocess.run(["ip", "link", "set", uplink, "up"], check=True)
        outside.run("ip", "addr", "add", f"{up4}.2/24", "dev", "eth0")
        outside.run("ip", "link", "set", "eth0", "up")
        outside.run("ip", "route", "add", "default", "via", f"{up4}.1")
        srv = outside.serve("tcp", "0.0.0.0", 7020)
        try:
            with _forwarding(net.bridge, uplink):
                before = firewall.counters(env.config.host_tag)["forward-in-drop"]
                out = ns.call("tcp", f"{up4}.2", 7020, timeout=1.0)
                assert out.startswith("FAIL") and "timed out" in out, out
                assert firewall.counters(env.config.host_tag)["forward-in-drop"] > before
                # the outside got nothing from the instance (/proc/self/net is the
                # namespace's own; /sys would show the host's links)
                rx = _rx_packets(outside, "eth0")
                assert rx < 5, rx  # (IPv6 router/neighbour chatter from the host at most)
        finally:
            srv.kill()
            srv.wait()
    finally:
        subprocess.run(["ip", "link", "del", uplink], check=False)
    # no NAT at all except loopback sources towards our bridges (published ports)
    items = nft().run([{"list": {"table": {"family": "inet", "name": f"stockade_{env.config.host_tag}"}}}])
    nat = [
        i["rule"]
        for i in items
        if "rule" in i and any("masquerade" in e or "snat" in e for e in i["rule"]["expr"])
    ]
    assert len(nat) == 1, nat
    text = str(nat[0]["expr"])
    assert "127.0.0.0" in text and link_prefix(env.config.host_tag) in text, text


def test_router_advert_from_instance_does_not_route_the_host(env: Env) -> None:
    """An instance advertising itself as an IPv6 router must not get a host route."""
    from stockade_linux_ns.net import firewall

    net = env.network()
    _, ns = env.instance("rogue", net.name)
    ns.run("ip", "addr", "add", "fe80::99/64", "dev", "eth0", "nodad")
    assert Path(f"/proc/sys/net/ipv6/conf/{net.bridge}/accept_ra").read_text().strip() != "0"
    before = firewall.counters(env.config.host_tag)["input-drop"]
    assert _probe(ns, "ra", "eth0", "fe80::99") == "sent"
    time.sleep(0.3)
    routes = subprocess.run(
        ["ip", "-6", "route", "show", "dev", net.bridge], capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes and "fe80::99" not in routes, routes
    assert firewall.counters(env.config.host_tag)["input-drop"] >= before + 3


def test_mtu_and_static_ipv6(env: Env) -> None:
    from .nethelpers import free_subnets

    v4, v6 = free_subnets()
    info = env.nets.create(f"t-{uuid.uuid4().hex[:8]}", [v4, v6], mtu=1400)
    env.networks.append(info.name)
    six = v6.split("::")[0] + "::beef"
    a, ns_a = env.instance("small", info.name, ipv6=six)
    b, ns_b = env.instance("smaller", info.name, mtu=1280)
    assert a.data["network"]["ipv6"] == six and f"{six}/64" in ns_a.run("ip", "-o", "addr")
    assert " mtu 1400 " in ns_a.run("ip", "-o", "link", "show", "eth0")
    assert " mtu 1280 " in ns_b.run("ip", "-o", "link", "show", "eth0")
    assert Path(f"/sys/class/net/{info.bridge}/mtu").read_text().strip() == "1400"
    assert Path(f"/sys/class/net/{b.data['network']['host_link']}/mtu").read_text().strip() == "1280"
    with pytest.raises(SpecError, match="already leased"):
        env.instance("clash6", info.name, ipv6=six)


def test_create_without_subnet_allocates(env: Env) -> None:
    info = env.nets.create(f"t-{uuid.uuid4().hex[:8]}", [])
    env.networks.append(info.name)
    info2 = env.nets.create(f"t-{uuid.uuid4().hex[:8]}", [])
    env.networks.append(info2.name)
    assert [s.split(".")[:2] for s in info.subnets[:1]] == [["10", "89"]]
    assert len(info.subnets) == 2 and ":" in info.subnets[1]
    assert not set(info.subnets) & set(info2.subnets)
