"""Test-only helpers: throwaway network namespaces and instance contexts."""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stockade.errors import SpecError
from stockade.interfaces import BackendConfig, InstanceContext
from stockade.spec import InstanceSpec

PROBE = str(Path(__file__).with_name("probe.py"))
CLONE_NEWNET = 0x40000000


class Netns:
    """A sleeping child in a new network namespace (test-only; the isolation backend makes real ones)."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: unshare, tell the parent, then become `sleep`
            try:
                os.close(r)
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.unshare(CLONE_NEWNET) != 0:
                    os._exit(1)
                os.write(w, b"k")
                os.execv("/bin/sleep", ["sleep", "600"])
            finally:
                os._exit(1)
        os.close(w)
        ok = os.read(r, 1)
        os.close(r)
        self.pid = pid
        if ok != b"k":
            self.close()
            raise RuntimeError("test netns: unshare(CLONE_NEWNET) failed")
        self.path = f"/proc/{pid}/ns/net"

    def cmd(self, *args: str) -> list[str]:
        return ["nsenter", f"--net={self.path}", *args]

    def run(self, *args: str, timeout: float = 10) -> str:
        return subprocess.run(
            self.cmd(*args), capture_output=True, text=True, check=True, timeout=timeout
        ).stdout

    def serve(self, proto: str, addr: str, port: int) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            self.cmd(sys.executable, "-I", "-S", PROBE, "serve", proto, addr, str(port)),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", f"server in netns did not start: {line!r}"
        return p

    def call(self, proto: str, addr: str, port: int, timeout: float = 2.0) -> str:
        return self.run(
            sys.executable,
            "-I",
            "-S",
            PROBE,
            "call",
            proto,
            addr,
            str(port),
            str(timeout),
            timeout=timeout + 10,
        ).strip()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def make_ctx(config: BackendConfig, name: str, network: str | None = None, **net: Any) -> InstanceContext:
    spec = InstanceSpec.from_dict({"name": name, "network": {"mode": "bridge", "network": network, **net}})
    iid = uuid.uuid4().hex
    run_dir = config.run_dir / "instances" / iid
    state_dir = config.root / "instances" / iid
    state_dir.mkdir(parents=True)
    return InstanceContext(id=iid, name=name, spec=spec, config=config, state_dir=state_dir, run_dir=run_dir)


def free_subnets() -> tuple[str, str]:
    """A random /24 + /64 pair in 10.213.0.0/16 and fd00:213::/32 (create() refuses overlaps)."""
    n = random.randrange(1, 250)
    return f"10.213.{n}.0/24", f"fd00:213:{n}::/64"


def create_network(nets: Any, name: str, isolated: bool = False) -> Any:
    for _ in range(20):  # another test session may hold a range: try another
        try:
            return nets.create(name, list(free_subnets()), isolated=isolated)
        except SpecError as e:
            if "overlaps" not in str(e):
                raise
    raise RuntimeError("no free test subnet found in 10.213.0.0/16")


def hosts_lookup(path: Path | str, name: str, version: int = 4) -> str:
    for line in Path(path).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        addr, *names = line.split()
        if name in names and (":" in addr) == (version == 6):
            return addr
    raise KeyError(f"{name} not in {path}")


def ip_links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return [
        ln.split(":")[1].strip().split("@")[0]
        for ln in out.splitlines()
        if ln.split(":")[1].strip().startswith(prefix)
    ]


def nft_tables() -> Sequence[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return [ln.split()[-1] for ln in out.splitlines()]
