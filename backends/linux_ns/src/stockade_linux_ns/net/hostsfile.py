"""/etc/hosts and /etc/resolv.conf of instances on a bridge network.

Each instance has its own ``<run_dir>/hosts``, which the isolation backend bind-mounts
read-only on /etc/hosts. When an instance joins or leaves a network, every member's
file is rewritten *in place* (same inode: a bind mount keeps showing the file it was
made from, so a rename would be invisible inside). A per-instance file rather than
one shared per network: it needs no assumption that the run directories share a file
system (a hard link would), and an instance's file can also carry its own hostname.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

HEADER = (
    "# written by stockade: instances on this network, updated as they come and go\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
)


def render_hosts(leases: Iterable[dict[str, Any]]) -> str:
    lines = [HEADER]
    for lease in sorted(leases, key=lambda x: str(x.get("name"))):
        names = [lease["name"]]
        if lease.get("hostname") and lease["hostname"] not in names:
            names.append(lease["hostname"])
        for key in ("ipv4", "ipv6"):
            if lease.get(key):
                lines.append(f"{lease[key]}\t{' '.join(names)}\n")
    return "".join(lines)


def render_resolv(dns: Sequence[str]) -> str:
    if not dns:
        return "# no name servers: stockade networks do not reach outside the host\n"
    return "".join(f"nameserver {d}\n" for d in dns)


def write_in_place(path: str, text: str, create: bool) -> bool:
    """Overwrite ``path`` keeping its inode; False if it is gone and ``create`` is False."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except FileNotFoundError:
        if create:
            raise
        return False
    try:
        data = text.encode()
        # Write, then cut: a reader sees old or new bytes, never an empty file.
        view = memoryview(data)
        off = 0
        while off < len(data):
            off += os.pwrite(fd, view[off:], off)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
    return True


def refresh(leases: dict[str, dict[str, Any]], skip: str | None = None) -> None:
    """Rewrite every member's hosts file (a member whose run dir is gone is left alone)."""
    text = render_hosts(leases.values())
    for lease_id, lease in leases.items():
        path = lease.get("hosts_file")
        if not path or lease_id == skip:
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
            write_in_place(path, text, create=False)
