"""The host side of a probe run: things on the host an instance must not reach.

``host_beacons()`` starts a listener on the host's loopback, an abstract unix
socket in the host's network namespace and a sleeping host process, reads the
suite's session keyring id and the host's interfaces, and hands over the
probe's command-line arguments naming them. Each beacon carries a random token
so the probe can tell the host's beacon from a namesake inside the instance.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
import secrets
import selectors
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_KEYCTL_NR = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 280, "s390x": 280}
_KEYCTL_GET_KEYRING_ID = 0
_KEY_SPEC_SESSION_KEYRING = -3


@dataclass(frozen=True)
class HostBeacons:
    """What the probe is told about the host (see docs/probe.md, "Arguments")."""

    pid: int
    port: int
    abstract: str
    token: str
    keyring: int | None
    ifaces: tuple[str, ...]  # "NAME=MAC" of the host's interfaces other than lo

    def args(self) -> list[str]:
        args = [
            "--host-pid",
            str(self.pid),
            "--host-port",
            str(self.port),
            "--host-abstract",
            self.abstract,
            "--host-token",
            self.token,
        ]
        if self.keyring is not None:
            args += ["--host-keyring", str(self.keyring)]
        for iface in self.ifaces:
            args += ["--host-iface", iface]
        return args


def session_keyring_id() -> int | None:
    """This process's session keyring id (what a child inherits), or None if unavailable."""
    nr = _KEYCTL_NR.get(platform.machine())
    if nr is None:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = int(
        libc.syscall(
            ctypes.c_long(nr),
            ctypes.c_long(_KEYCTL_GET_KEYRING_ID),
            ctypes.c_long(_KEY_SPEC_SESSION_KEYRING),
            ctypes.c_long(0),
        )
    )
    return result if result >= 0 else None


def host_interfaces() -> tuple[str, ...]:
    """``NAME=MAC`` for each interface of this network namespace with a real MAC."""
    found: list[str] = []
    net = Path("/sys/class/net")
    for entry in sorted(net.iterdir()) if net.is_dir() else []:
        try:
            mac = (entry / "address").read_text().strip()
        except OSError:
            continue
        if entry.name != "lo" and mac and mac.strip("0:"):
            found.append(f"{entry.name}={mac}")
    return tuple(found)


def _serve(listeners: list[socket.socket], token: bytes, stop: threading.Event) -> None:
    with selectors.DefaultSelector() as sel:
        for listener in listeners:
            sel.register(listener, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    conn, _addr = sock.accept()
                except OSError:
                    continue
                with conn, contextlib.suppress(OSError):
                    conn.sendall(token + b"\n")


@contextlib.contextmanager
def host_listener(token: str) -> Iterator[int]:
    """A TCP listener on every host address (the wildcard, IPv6 with v4-mapped where the
    host has IPv6, else 0.0.0.0) that sends ``token``; yields its port, closed on exit.

    What a host service bound to all addresses looks like: only the instance's own
    network stack and the host's firewall can keep an instance from reaching it."""
    stop = threading.Event()
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", 0)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", 0)
    thread: threading.Thread | None = None
    try:
        sock.bind(address)
        sock.listen(64)
        sock.setblocking(False)
        thread = threading.Thread(target=_serve, args=([sock], token.encode(), stop), daemon=True)
        thread.start()
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=2)
        sock.close()


@contextlib.contextmanager
def host_beacons() -> Iterator[HostBeacons]:
    """Start the host's beacons for one or more probe runs; everything stops on exit."""
    token = secrets.token_hex(8)
    abstract = f"stockade-probe-{token}"
    stop = threading.Event()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sleeper: subprocess.Popen[bytes] | None = None
    thread: threading.Thread | None = None
    try:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        unix.bind("\0" + abstract)
        unix.listen(16)
        for sock in (tcp, unix):
            sock.setblocking(False)
        thread = threading.Thread(target=_serve, args=([tcp, unix], token.encode(), stop), daemon=True)
        thread.start()
        sleep = shutil.which("sleep") or "/bin/sleep"
        # argv[0] carries the token: the probe checks /proc/<pid>/cmdline for it.
        sleeper = subprocess.Popen(
            [f"stockade-probe-beacon-{token}", "3600"],
            executable=sleep,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        yield HostBeacons(
            pid=sleeper.pid,
            port=tcp.getsockname()[1],
            abstract=abstract,
            token=token,
            keyring=session_keyring_id(),
            ifaces=host_interfaces(),
        )
    finally:
        stop.set()
        if thread is not None:
            thread.join(timeout=2)
        tcp.close()
        unix.close()
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
