"""Traffic helper run inside a test namespace (stdlib only): tiny servers and clients.

probe.py serve tcp|udp ADDR PORT   print "ready", answer each request with "pong:<data>"
probe.py call tcp|udp ADDR PORT [TIMEOUT]   print the answer, or "FAIL <reason>"
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


if __name__ == "__main__":
    mode, proto, addr, port = sys.argv[1:5]
    if mode == "serve":
        serve(proto, addr, int(port))
    else:
        call(proto, addr, int(port), float(sys.argv[5]) if len(sys.argv) > 5 else 2.0)
