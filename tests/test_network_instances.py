"""Bridged networking between real instances: by name, across networks, isolation, ports.

Traffic goes only to loopback and to the instances these tests create."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from stockade import Host, StateConflict

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SUBNET_A = "10.231.11.0/24"
SUBNET_B = "10.231.12.0/24"
SUBNET_ISO = "10.231.13.0/24"


# busybox's nc has no UDP: the host's own python (read-only /usr) plays UDP on both sides
HOST_PY = [
    {"source": "/usr", "target": "/host/usr", "readonly": True},
    {"source": "/usr/lib", "target": "/lib", "readonly": True},
    {"source": "/usr/lib64", "target": "/lib64", "readonly": True},
]
UDP_ECHO = (
    "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 8081))\n"
    "while True:\n d, a = s.recvfrom(100); s.sendto(b'udp-' + sys.argv[1].encode(), a)"
)
UDP_ASK = (
    "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
    "for i in range(10):\n"
    " s.sendto(b'?', (sys.argv[1], 8081))\n"
    " try: print(s.recv(100).decode()); break\n"
    " except OSError: pass"
)


def _server(host: Host, name: str, net: str, **extra: object):  # type: ignore[no-untyped-def]
    """An instance answering TCP 8080 and UDP 8081 with its own name, forever."""
    script = (
        f"while true; do nc -l -p 8080 -e echo tcp-{name}; done & "
        f'/host/usr/bin/python3 -I -S -c "$UDP" {name} & wait'
    )
    inst = host.create(
        {
            "name": name,
            "network": {"mode": "bridge", "network": net, **extra},
            "mounts": HOST_PY,
            "process": {"args": ["sh", "-c", script], "env": {"UDP": UDP_ECHO}},
        }
    )
    inst.start()
    return inst


def _client(host: Host, name: str, net: str, cmd: str) -> str:
    inst = host.create(
        {
            "name": name,
            "network": {"mode": "bridge", "network": net},
            "mounts": HOST_PY,
            "process": {"args": ["sleep", "60"], "env": {"ASK": UDP_ASK}},
        }
    )
    inst.start()
    try:
        return inst.run(["sh", "-c", cmd], timeout=30).stdout.decode()
    finally:
        inst.delete(force=True)


def _tcp(target: str) -> str:
    # retry briefly: the server's nc restarts between connections
    return (
        f"for i in 1 2 3 4 5 6 7 8 9 10; do r=$(nc -w 2 {target} 8080 </dev/null) && "
        f'[ -n "$r" ] && echo $r && break; sleep 0.2; done'
    )


@pytest.fixture
def nets(host: Host):  # type: ignore[no-untyped-def]
    n = host.networks()
    made = []

    def make(
        name: str, subnet: str, isolated: bool = False, more: tuple[str, ...] = (), mtu: int | None = None
    ) -> None:
        n.create(name, [subnet, *more], isolated=isolated, mtu=mtu)
        made.append(name)

    yield make
    from stockade_linux_ns.net.names import link_prefix, table_name

    for inst in host.instances():
        inst.delete(force=True)
    for name in made:
        n.delete(name)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert link_prefix(host.tag) not in links, links
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert table_name(host.tag) not in tables, tables


def test_same_network_by_name_tcp_and_udp(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("neta", SUBNET_A)
    _server(host, "web", "neta")
    out = _client(
        host, "cli", "neta", _tcp("web") + '; /host/usr/bin/python3 -I -S -c "$ASK" web; grep web /etc/hosts'
    )
    assert "tcp-web" in out and "udp-web" in out, out
    assert "10.231.11." in out


def test_other_network_cannot_reach(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("neta", SUBNET_A)
    nets("netb", SUBNET_B)
    web = _server(host, "web", "neta")
    addr = host.networks().inspect("neta").instances[0]["ipv4"].split("/")[0]
    out = _client(host, "outsider", "netb", f"nc -w 2 {addr} 8080 </dev/null; echo rc=$?")
    assert "tcp-web" not in out and "rc=1" in out, out
    assert web.status == "running"


def test_isolated_network_blocks_instance_to_instance(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("iso", SUBNET_ISO, isolated=True)
    _server(host, "web", "iso")
    out = _client(host, "peer", "iso", "nc -w 2 web 8080 </dev/null; echo rc=$?")
    assert "tcp-web" not in out and "rc=1" in out, out


def test_published_port_from_host_loopback(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("neta", SUBNET_A)
    _server(host, "pub", "neta", publish=["127.0.0.1:18080:8080/tcp"])
    got = b""
    deadline = time.monotonic() + 15
    while b"tcp-pub" not in got and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", 18080), timeout=2) as s:
                got = s.recv(100)
        except OSError:
            time.sleep(0.2)
    assert b"tcp-pub" in got


def test_host_listeners_unreachable_from_inside(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("neta", SUBNET_A)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 0))  # every host address, the bridge's gateway included
    srv.listen(8)
    port = srv.getsockname()[1]
    srv.setblocking(False)
    gw = host.networks().inspect("neta").gateways[0].split("/")[0]
    try:
        out = _client(
            host,
            "curious",
            "neta",
            f"nc -w 2 127.0.0.1 {port} </dev/null; echo lo=$?; nc -w 2 {gw} {port} </dev/null; echo gw=$?",
        )
        assert "lo=1" in out and "gw=1" in out, out
        with pytest.raises(BlockingIOError):
            srv.accept()  # nothing ever got through to the host's listener
    finally:
        srv.close()


def test_concurrent_creates_get_distinct_addresses(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    import sys

    nets("neta", SUBNET_A)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stockade",
                "--root",
                str(host.root),
                "create",
                f"c{i}",
                "--network",
                "neta",
                "--",
                "sleep",
                "60",
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    leases = host.networks().inspect("neta").instances
    addrs = [x["ipv4"] for x in leases]
    assert len(addrs) == 8 and len(set(addrs)) == 8, addrs
    with pytest.raises(StateConflict, match="in use"):
        host.networks().delete("neta")


def test_network_modes_none_and_loopback(host: Host) -> None:
    """none: no interface but lo, and lo down; loopback (the default): lo only, up."""
    show = "ls /sys/class/net; cat /sys/class/net/lo/flags; cat /proc/net/dev | tail -n +3 | cut -d: -f1"
    for mode, want_up in (("none", False), (None, True)):
        spec: dict[str, object] = {"name": f"m-{mode}", "process": {"args": ["sleep", "60"]}}
        if mode:
            spec["network"] = {"mode": mode}
        inst = host.create(spec)
        inst.start()
        try:
            out = inst.run(["sh", "-c", show], timeout=10).stdout.decode().split()
        finally:
            inst.delete(force=True)
        # /proc/net/dev is the instance's own namespace (sysfs too: mounted inside it)
        assert out[0] == "lo" and out[2:] == ["lo"], out
        assert bool(int(out[1], 16) & 1) is want_up, out


def test_earlier_instance_reaches_later_one_by_name(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    """A name added after an instance started is visible to it (its /etc/hosts is updated
    in place); /etc/resolv.conf comes from network.dns; both are read-only inside."""
    nets("neta", SUBNET_A, more=("fd00:231:11::/64",), mtu=1400)
    early = host.create(
        {
            "name": "early",
            "network": {"mode": "bridge", "network": "neta", "dns": ["10.231.11.53"]},
            "mounts": HOST_PY,
            "process": {"args": ["sleep", "60"], "env": {"ASK": UDP_ASK}},
        }
    )
    early.start()
    _server(host, "late", "neta")
    late6 = next(x["ipv6"] for x in host.networks().inspect("neta").instances if x["name"] == "late")
    out = early.run(
        [
            "sh",
            "-c",
            _tcp("late")
            + '; /host/usr/bin/python3 -I -S -c "$ASK" late'
            + f"; nc -w 2 {late6} 8080 </dev/null"
            + "; cat /etc/resolv.conf; echo x >> /etc/hosts || echo hosts-ro"
            + "; echo x >> /etc/resolv.conf || echo resolv-ro; cat /sys/class/net/eth0/mtu",
        ],
        timeout=30,
    ).stdout.decode()
    assert out.count("tcp-late") == 2 and "udp-late" in out, out
    assert "nameserver 10.231.11.53" in out, out
    assert "hosts-ro" in out and "resolv-ro" in out, out
    assert out.split()[-1] == "1400", out
    early.delete(force=True)


def test_published_udp_port_from_host_loopback(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    nets("neta", SUBNET_A)
    _server(host, "pubu", "neta", publish=["18081:8081/udp"])
    got = b""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1)
        for _ in range(15):
            s.sendto(b"?", ("127.0.0.1", 18081))
            try:
                got = s.recv(100)
                break
            except OSError:
                pass
    assert got == b"udp-pubu"


def _host_net_state() -> tuple[str, str, str]:
    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout

    def not_ours(text: str) -> str:
        # stk... links come and go with other test roots on this machine, and an instance
        # may take its own veth's carrier down (its end): compare the rest of the host
        return "\n".join(sorted(ln for ln in text.splitlines() if "stk" not in ln))

    links = "\n".join(sorted(ln.split(":")[1].strip() for ln in run("ip", "-o", "link").splitlines()))
    return not_ours(links), not_ours(run("ip", "route")), not_ours(run("ip", "-6", "route"))


@pytest.mark.parametrize("allow", [[], ["net_admin"]])
def test_instance_cannot_change_host_links_or_routes(host: Host, nets, allow: list[str]) -> None:  # type: ignore[no-untyped-def]
    """By default the instance may not even change its own links and routes; with
    net_admin relaxed it may, and only its own namespace changes."""
    nets("neta", SUBNET_A)
    inst = host.create(
        {
            "name": "tinker",
            "network": {"mode": "bridge", "network": "neta"},
            "allow": allow,
            "process": {"args": ["sleep", "60"]},
        }
    )
    inst.start()
    before = _host_net_state()
    cmds = (
        "ip link add stkevil0 type bridge; echo add=$?; "
        "ip route add 10.231.99.0/24 dev eth0; echo route=$?; ip route; "
        "ip route del default; echo delroute=$?; "
        "ip link set eth0 down; echo down=$?; "
        "ip link set eth0 netns 1; echo move=$?"
    )
    out = inst.run(["sh", "-c", cmds], timeout=20).stdout.decode()
    after = _host_net_state()
    inst.delete(force=True)
    # pid 1 is the instance's own (pid namespace): no way to name the host's namespace,
    # so no link can be pushed out into the host and no host link is seen or changed
    assert after == before
    assert "10.231.99.0" not in after[1], after[1]
    if allow:
        assert "route=0" in out and "10.231.99.0/24" in out, out  # its own table changed
    else:
        for what in ("add", "route", "delroute", "down"):
            assert f"{what}=0" not in out, out


CRASH_CHILD = r"""
import os, signal, sys
from stockade import Host
from stockade_linux_ns.net import attach, firewall, netlink

point = sys.argv[3]
def after(mod, fn):
    orig = getattr(mod, fn)
    def wrapped(*a, **k):
        if point == "before-" + fn:
            os.kill(os.getpid(), signal.SIGKILL)
        r = orig(*a, **k)
        if point == "after-" + fn:
            os.kill(os.getpid(), signal.SIGKILL)
        return r
    setattr(mod, fn, wrapped)
after(netlink, "create_instance_link")
after(netlink, "configure_inside")
after(firewall, "add_publish")
h = Host(sys.argv[1])
inst = h.create({"name": sys.argv[2], "network": {"mode": "bridge", "network": "neta",
    "publish": ["18082:80/udp", "18083:80/tcp"]}, "process": {"args": ["sleep", "60"]}})
inst.start()
"""


def _in_cgroup_of(tag: str) -> list[str]:
    """Live processes of this root's cgroups (a zombie waiting for init holds no namespace)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cgroup") as f:
                    mine = tag in f.read()
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if mine and state != "Z":
                found.append(pid)
    return found


@pytest.mark.parametrize(
    "point",
    [
        "before-create_instance_link",  # lease, hosts files written; nothing in the kernel
        "after-create_instance_link",  # the veth pair exists, eth0 unconfigured
        "after-configure_inside",  # addresses and routes set, ports not published yet
        "after-add_publish",  # attach done; the state does not know it
    ],
)
def test_kill9_mid_create_then_gc_leaves_nothing(host: Host, nets, point: str) -> None:  # type: ignore[no-untyped-def]
    import sys

    from stockade_linux_ns.net.names import link_prefix, table_name

    nets("neta", SUBNET_A)
    bridge = host.networks().inspect("neta").bridge
    p = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(host.root), "crashy", point],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == -9, (p.returncode, p.stderr)
    leases = host.networks().inspect("neta").instances
    assert [x["name"] for x in leases] == ["crashy"]  # the crash did leave a lease
    gc = subprocess.run(
        [sys.executable, "-m", "stockade", "--root", str(host.root), "gc"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gc.returncode == 0, gc.stderr
    assert "lease neta/crashy" in gc.stdout, gc.stdout
    assert host.networks().inspect("neta").instances == ()
    assert [i.name for i in host.instances()] == []
    deadline = time.monotonic() + 10
    while _in_cgroup_of(host.tag) and time.monotonic() < deadline:  # PID 1 sees its pipe close
        time.sleep(0.1)
    assert _in_cgroup_of(host.tag) == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    ours = [ln.split(":")[1].strip() for ln in links.splitlines() if link_prefix(host.tag) in ln]
    assert ours == [bridge], ours
    table = subprocess.run(
        ["nft", "list", "table", "inet", table_name(host.tag)], capture_output=True, text=True, check=True
    ).stdout
    assert "18082" not in table and "18083" not in table, table
    # the ports are free again: a new instance may publish them
    again = _server(host, "again", "neta", publish=["18082:8081/udp", "18083:8080/tcp"])
    again.delete(force=True)


def test_supervisor_killed_after_attach_then_gc_leaves_nothing(host: Host, nets) -> None:  # type: ignore[no-untyped-def]
    """The CLI's create runs in the root's supervisor: SIGKILL it once the bridged network is
    attached (the fault is inherited from the command's environment), then gc."""
    import sys

    from stockade_linux_ns.net.names import link_prefix

    nets("neta", SUBNET_A)
    bridge = host.networks().inspect("neta").bridge
    env = dict(os.environ, STOCKADE_FAULT="isolation:kill", STOCKADE_SUPERVISOR="1")
    argv = [sys.executable, "-m", "stockade", "--root", str(host.root)]
    r = subprocess.run(
        [*argv, "run", "-d", "--name", "sup", "--network", "neta", "-p", "18084:8080", "--", "sleep", "30"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    assert r.returncode != 0
    assert [x["name"] for x in host.networks().inspect("neta").instances] == ["sup"]
    gc = subprocess.run([*argv, "gc"], capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0 and "lease neta/sup" in gc.stdout, (gc.stdout, gc.stderr)
    assert host.networks().inspect("neta").instances == () and host.instances() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert [ln.split(":")[1].strip() for ln in links.splitlines() if link_prefix(host.tag) in ln] == [bridge]
    again = host.create(
        {"name": "sup", "network": {"mode": "bridge", "network": "neta", "publish": ["18084:8080"]}}
    )
    again.delete(force=True)  # the name, the address and the port are free again


def test_cli_network_commands(host: Host) -> None:
    import json
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stockade", "--root", str(host.root), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert cli("network", "create", "auto").returncode == 0  # no --subnet: allocated
    assert cli("network", "create", "iso", "--subnet", SUBNET_ISO, "--isolated").returncode == 0
    info = json.loads(cli("network", "inspect", "auto").stdout)
    assert info["subnets"][0].startswith("10.89.") and len(info["subnets"]) == 2, info
    listing = cli("network", "list").stdout
    assert "auto" in listing and "iso" in listing and SUBNET_ISO in listing, listing
    assert json.loads(cli("network", "inspect", "iso").stdout)["isolated"] is True
    assert cli("run", "-d", "--name", "user", "--network", "iso", "--", "sleep", "60").returncode == 0
    refused = cli("network", "delete", "iso")
    assert refused.returncode != 0
    assert refused.stderr.count("\n") == 1 and "in use by user" in refused.stderr, refused.stderr
    missing = cli("network", "inspect", "nope")
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1, missing.stderr
    assert cli("delete", "-f", "user").returncode == 0
    for name in ("iso", "auto"):
        assert cli("network", "delete", name).returncode == 0
    assert "NETWORK" in cli("network", "list").stdout
    assert cli("gc").stdout.strip() == "nothing to remove"
