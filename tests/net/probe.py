"""Traffic helper run inside a test namespace (stdlib only): tiny servers and clients.

probe.py serve tcp|udp ADDR PORT   print "ready", answer each request with "pong:<data>"
probe.py call tcp|udp ADDR PORT [TIMEOUT]   print the answer, or "FAIL <reason>"
probe.py ra IFNAME SRC   send one IPv6 router advertisement (default router: SRC) to ff02::1
"""

from __future__ import annotations

import socket
import sys


def family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(proto: str, addr: str, port: int) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(family(addr), kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    if proto == "tcp":
        s.listen(16)
    print("ready", flush=True)
    while True:
        if proto == "tcp":
            c, _ = s.accept()
            with c:
                data = c.recv(100)
                c.sendall(b"pong:" + data)
        else:
            data, peer = s.recvfrom(100)
            s.sendto(b"pong:" + data, peer)


def call(proto: str, addr: str, port: int, timeout: float) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    try:
        with socket.socket(family(addr), kind) as s:
            s.settimeout(timeout)
            if proto == "tcp":
                s.connect((addr, port))
                s.sendall(b"hi")
                print(s.recv(100).decode())
            else:
                s.sendto(b"hi", (addr, port))
                print(s.recvfrom(100)[0].decode())
    except OSError as e:
        print(f"FAIL {type(e).__name__} {e}")


def router_advert(ifname: str, src: str) -> None:
    """An RA claiming SRC as default router for 30 min: what a hostile instance would
    send to make the host route through it. The kernel fills in the checksum."""
    import struct

    index = socket.if_nametoindex(ifname)
    with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
        s.bind((src, 0, 0, index))
        ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        for _ in range(3):
            s.sendto(ra, ("ff02::1", 0, 0, index))
    print("sent")


if __name__ == "__main__":
    if sys.argv[1] == "ra":
        router_advert(sys.argv[2], sys.argv[3])
        sys.exit(0)
    mode, proto, addr, port = sys.argv[1:5]
    if mode == "serve":
        serve(proto, addr, int(port))
    else:
        call(proto, addr, int(port), float(sys.argv[5]) if len(sys.argv) > 5 else 2.0)
