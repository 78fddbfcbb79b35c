"""CLI flags that describe an instance, turned into a spec dict (validated by spec.py)."""

from __future__ import annotations

import argparse

from ..limits import IO_LIMITS, QUOTA_LIMITS

TYPE_CHECKING = False  # typing costs milliseconds on the run path
if TYPE_CHECKING:
    from typing import Any

# cpuset_mems is set in a spec file only (no flag); disk is the storage's quota, not a cgroup's
_RESOURCE_FLAGS = (*(f for f in QUOTA_LIMITS if f != "cpuset_mems"), "disk")


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("instance")
    g.add_argument("--spec", metavar="FILE.toml", help="spec file; flags override its values")
    g.add_argument("--image", help="image to clone the root file system from (default: default)")
    g.add_argument("--hostname")
    g.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    g.add_argument("-w", "--workdir", metavar="DIR")
    g.add_argument("-u", "--user", metavar="UID[:GID]")
    g.add_argument(
        "-v", "--volume", action="append", default=[], metavar="SRC:DST[:ro]", help="bind-mount a host path"
    )
    g.add_argument("--tmpfs", action="append", default=[], metavar="DST")
    g.add_argument("--read-only", action="store_true", default=None, help="read-only root file system")
    g.add_argument(
        "--delegate-dataset",
        action="store_true",
        default=None,
        help="a ZFS dataset of the instance's own to manage (FreeBSD jails on zfs; needs --allow mount)",
    )
    g.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="RESTRICTION",
        help="relax a default restriction (e.g. raw_sockets, mount, mknod; repeatable)",
    )
    g.add_argument("--userns", action="store_true", default=None, help="run in a user namespace")
    g.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    g.add_argument("--stop-timeout", type=float, metavar="SECONDS")
    r = p.add_argument_group("resources")
    r.add_argument("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 64M")
    r.add_argument("--memory-swap", metavar="SIZE", help="memory + swap limit (-1: unlimited)")
    r.add_argument("--memory-reservation", metavar="SIZE")
    r.add_argument("--cpus", metavar="N", help="CPU quota in cores, e.g. 0.5")
    r.add_argument("--cpu-weight", metavar="1-10000")
    r.add_argument("--cpuset-cpus", metavar="LIST")
    r.add_argument("--pids", "--pids-limit", dest="pids", metavar="N")
    r.add_argument("--disk", metavar="SIZE", help="disk quota of the root file system")
    for d in ("read", "write"):
        r.add_argument(f"--io-{d}-bps", metavar="SIZE", help=f"{d} bytes per second on the root's device")
        r.add_argument(f"--io-{d}-iops", metavar="N", help=f"{d} operations per second")
    n = p.add_argument_group("network")
    n.add_argument(
        "--network",
        "--net",
        dest="network",
        metavar="MODE|NAME",
        help="none, loopback (default), host, bridge or the name of a network",
    )
    n.add_argument("--ip", metavar="IPV4")
    n.add_argument("--ip6", metavar="IPV6")
    n.add_argument("-p", "--publish", action="append", default=[], metavar="HOSTPORT:PORT[/PROTO]")
    n.add_argument("--dns", action="append", default=[])
    b = p.add_argument_group("backends")
    b.add_argument("--isolation", help="isolation backend (default: the best that can run here)")
    b.add_argument("--quota", help="quota backend")
    b.add_argument("--storage", help="storage backend")


def spec_from_args(ns: argparse.Namespace, name: str | None, command: list[str]) -> dict[str, Any]:
    """The flags as a spec dict, to be merged over the spec file (flags win)."""
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if ns.image:
        d["image"] = ns.image
    if ns.hostname:
        d["hostname"] = ns.hostname
    proc: dict[str, Any] = {}
    if command:
        proc["args"] = command
    if ns.env:
        proc["env"] = list(ns.env)
    if ns.workdir:
        proc["cwd"] = ns.workdir
    if ns.user:
        proc["user"] = ns.user
    if getattr(ns, "tty", False):
        proc["terminal"] = True
    if proc:
        d["process"] = proc
    res: dict[str, Any] = {}
    for key in _RESOURCE_FLAGS:
        val = getattr(ns, key)
        if val is not None:
            res[key] = _num(val)
    io: dict[str, Any] = {}
    for key in IO_LIMITS:
        val = getattr(ns, f"io_{key}")
        if val is not None:
            io[key] = _num(val)
    if io:
        res["io"] = io
    if res:
        d["resources"] = res
    mounts: list[dict[str, Any]] = []
    for v in ns.volume:
        parts = v.split(":")
        m: dict[str, Any] = {"type": "bind", "source": parts[0], "target": parts[1] if len(parts) > 1 else ""}
        if len(parts) > 2:
            m["readonly"] = "ro" in parts[2].split(",")
        mounts.append(m)
    mounts += [{"type": "tmpfs", "target": t} for t in ns.tmpfs]
    if mounts:
        d["mounts"] = mounts
    if ns.read_only:
        d["readonly_rootfs"] = True
    if ns.delegate_dataset:
        d["delegate_dataset"] = True
    if ns.allow:
        d["allow"] = [a for item in ns.allow for a in item.split(",") if a]
    if ns.userns:
        d["user_namespace"] = True
    if ns.label:
        d["labels"] = dict(item.partition("=")[::2] for item in ns.label)
    if ns.stop_timeout is not None:
        d["stop_timeout"] = ns.stop_timeout
    net: dict[str, Any] = {}
    if ns.network:
        if ns.network in ("none", "loopback", "host", "bridge"):
            net["mode"] = ns.network
        else:
            net["mode"], net["network"] = "bridge", ns.network
    if ns.ip:
        net["ipv4"] = ns.ip
    if ns.ip6:
        net["ipv6"] = ns.ip6
    if ns.publish:
        net["publish"] = list(ns.publish)
    if ns.dns:
        net["dns"] = list(ns.dns)
    if net:
        d["network"] = net
    backends = {k: getattr(ns, k) for k in ("isolation", "quota", "storage") if getattr(ns, k)}
    if backends:
        d["backends"] = backends
    return d


def _num(v: str) -> Any:
    """Numbers stay numbers (so "0.5" cores is a float); everything else is left to validation."""
    try:
        return int(v)
    except ValueError:
        pass
    try:
        return float(v)
    except ValueError:
        return v
