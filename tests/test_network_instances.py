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

    def make(name: str, subnet: str, isolated: bool = False) -> None:
        n.create(name, [subnet], isolated=isolated)
        made.append(name)

    yield make
    for inst in host.instances():
        inst.delete(force=True)
    for name in made:
        n.delete(name)
    assert not [
        x
        for x in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.split("\n")
        if f"stk{''}" in x and host.tag[:5] in x
    ]


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
