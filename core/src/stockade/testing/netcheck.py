"""Network isolation of a bridged instance, measured from inside it (``test_network_isolation[bridge]``).

The suite makes two named networks through the Host API (``host.networks()``) in its own
host root, an extra interface on the host holding test-only addresses, and a TCP listener
on every host address; it starts a peer instance on each network and runs the probe in a
third instance on the first network. From there it connects, all at once, to:

- the host: the gateways of the instance's own network, the other network's gateways, the
  extra interface's addresses and the host's own global addresses, at the wildcard
  listener: every attempt must be refused or time out;
- the peer on the other network: unreachable (with IPv4 forwarding turned on on both
  bridges where the kernel has that switch, so the kernel would route between them and
  only the backend's isolation stops the packets);
- the peer on the same network: reachable (the control: the instance has a working
  network, and the probe's connect from inside detects success).

The host's side of the control: the same probe binary run on the host reaches the listener
at every host address (same code, same port, same token). Inside, the instance's
interfaces must be ``lo`` and the one holding its own address. Traffic goes only to
addresses the suite made or the host's own; nothing is sent off the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import NotSupported, SpecError, StockadeError
from .harness import run_once, running
from .outcomes import cannot_run, inconclusive, not_supported
from .probe import (
    ConnectResult,
    HostBeacons,
    host_interfaces,
    host_listener,
    parse_connects,
    parse_facts,
    parse_results,
)
from .subject import PROBE_PATH, Subject

# The suite's test ranges (tests/net uses 10.213/16): a random /24 + /64 per network,
# another for the extra host interface; networks.create refuses one that overlaps.
V4_RANGE = "10.214.{n}.0/24"
V6_RANGE = "fd00:214:{n}::/64"
CONNECT_TIMEOUT_MS = 1500
FOREIGN_CHECKS = (
    "foreign_network.host_loopback_tcp",
    "foreign_network.host_abstract_unix",
    "foreign_network.host_interfaces",
)
# Devices the kernel puts into every new network namespace when their module is loaded
# (fb_tunnels_only_for_init_net=0): the namespace's own, not the host's.
FALLBACK_DEVICES = frozenset(
    {"sit0", "tunl0", "ip6tnl0", "ip_vti0", "ip6_vti0", "gre0", "gretap0", "erspan0", "ip6gre0"}
)


@dataclass(frozen=True)
class Net:
    """A network the suite made: its name, subnets, gateways (host addresses) and bridge."""

    name: str
    subnets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    gateways: tuple[str, ...]
    bridge: str | None

    def address(self, offset: int) -> dict[str, str]:
        """The spec's static addresses (``network.ipv4``/``ipv6``) at ``offset`` in each subnet."""
        out = {}
        for net in self.subnets:
            out[f"ipv{net.version}"] = str(net.network_address + offset)
        return out


@dataclass
class Targets:
    """What the bridged instance connects to, by kind; each a ``host:port`` target string."""

    host: dict[str, str] = field(default_factory=dict)  # target -> what it is
    other_peer: list[str] = field(default_factory=list)
    same_peer: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [*self.host, *self.other_peer, *self.same_peer]


def target(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _has_ipv6() -> bool:
    import socket

    # Linux without IPv6 (ipv6.disable=1) has no /proc/net/if_inet6
    return socket.has_ipv6 and (os.path.exists("/proc/net/if_inet6") or not os.path.isdir("/proc/net"))


def make_network(nets: Any, name: str, used: set[int]) -> Net:
    """Create a network of the root in the suite's range (another session may hold one: retry)."""
    last: Exception | None = None
    for _ in range(16):
        n = random.choice([i for i in range(1, 255) if i not in used])
        subnets = [V4_RANGE.format(n=n)] + ([V6_RANGE.format(n=n)] if _has_ipv6() else [])
        try:
            info = nets.create(name, subnets)
        except SpecError as e:
            if "overlap" not in str(e):
                raise
            last = e
            continue
        used.add(n)
        return Net(
            name=name,
            subnets=tuple(ipaddress.ip_network(s) for s in info.subnets),
            gateways=tuple(str(g) for g in info.gateways),
            bridge=getattr(info, "bridge", None),
        )
    raise SpecError([("subnets", f"no free test subnet in 10.214.0.0/16: {last}")])


# --- the host side (Linux: the extra interface, forwarding, the host's addresses) --------


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True, timeout=10)
    data = json.loads(out.stdout or "[]")
    return data if isinstance(data, list) else []


def _host_prefixes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every address and route prefix on the host (to pick a range nobody uses)."""
    found: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for link in _ip_json("addr"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                found.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for fam in ("-4", "-6"):
        for route in _ip_json(fam, "route", "show", "table", "all"):
            dst = str(route.get("dst", "default"))
            if dst != "default":
                with contextlib.suppress(ValueError):
                    found.append(ipaddress.ip_network(dst, strict=False))
    return found


def host_addresses(limit: int = 2) -> list[str]:
    """Up to ``limit`` global addresses per family of the host's own interfaces (none of a
    stockade root's ``stk…`` links): the host's real addresses, reached through the
    instance's default route, delivered locally, never sent off the host."""
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        return []
    out: dict[int, list[str]] = {4: [], 6: []}
    with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
        for link in _ip_json("addr"):
            if str(link.get("ifname", "")).startswith("stk") or "LOOPBACK" in link.get("flags", []):
                continue
            for a in link.get("addr_info", []):
                ip = ipaddress.ip_address(a.get("local", ""))
                wanted = a.get("scope") == "global" and not ip.is_loopback and not ip.is_link_local
                if wanted and len(out[ip.version]) < limit:
                    out[ip.version].append(str(ip))
    return out[4] + out[6]


@contextlib.contextmanager
def extra_host_interface(tag: str, used: set[int]) -> Iterator[tuple[str, list[str]] | str]:
    """A link on the host (``stkt<hex>``, alias ``stockade:<tag>:suite-host-address``, so
    the root's leftover check finds it) holding a test-only /32 and /128 from a range no
    host address or route uses; yields (name, addresses), or why there is none. Removed on
    exit."""
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        yield "no extra host interface (needs Linux and iproute2's ip)"
        return
    name = f"stkt{secrets.token_hex(4)}"
    made = False
    try:
        taken = _host_prefixes()
        free = [
            n
            for n in range(1, 255)
            if n not in used
            and not any(
                p.overlaps(ipaddress.ip_network(V4_RANGE.format(n=n))) for p in taken if p.version == 4
            )
            and not any(
                p.overlaps(ipaddress.ip_network(V6_RANGE.format(n=n))) for p in taken if p.version == 6
            )
        ]
        if not free:
            yield "no extra host interface: no free test range in 10.214.0.0/16"
            return
        n = random.choice(free)
        used.add(n)
        addrs = [str(ipaddress.ip_network(V4_RANGE.format(n=n)).network_address + 9)]
        if _has_ipv6():
            addrs.append(str(ipaddress.ip_network(V6_RANGE.format(n=n)).network_address + 9))
        # a dummy where the kernel has the driver, else an empty bridge (local addresses either way)
        for kind in ("dummy", "bridge"):
            r = subprocess.run(
                ["ip", "link", "add", name, "type", kind], capture_output=True, timeout=10, check=False
            )
            if r.returncode == 0:
                made = True
                break
        if not made:
            yield f"no extra host interface: ip link add: {r.stderr.decode().strip()}"
            return
        cmds = [["ip", "link", "set", name, "alias", f"stockade:{tag}:suite-host-address"]]
        for a in addrs:
            plen = 32 if ":" not in a else 128
            cmds.append(["ip", "addr", "add", f"{a}/{plen}", "dev", name] + (["nodad"] if ":" in a else []))
        cmds.append(["ip", "link", "set", name, "up"])
        for cmd in cmds:
            subprocess.run(cmd, check=True, capture_output=True, timeout=10)
        yield name, addrs
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        yield f"no extra host interface: {e}"
    finally:
        if made:
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10, check=False)


@contextlib.contextmanager
def ipv4_forwarding(bridges: list[str]) -> Iterator[list[str]]:
    """IPv4 forwarding on for packets arriving on these bridges (the suite's own networks),
    restored on exit; yields those where the kernel has the switch."""
    saved: dict[Path, str] = {}
    try:
        for b in bridges:
            p = Path(f"/proc/sys/net/ipv4/conf/{b}/forwarding")
            with contextlib.suppress(OSError):
                old = p.read_text().strip()
                p.write_text("1")
                saved[p] = old
        yield [p.parent.name for p in saved]
    finally:
        for p, old in saved.items():
            with contextlib.suppress(OSError):
                p.write_text(old)


# --- the measurement ----------------------------------------------------------------------


def _wait_serving(subject: Subject, names: list[str], timeout: float = 8.0) -> dict[str, str]:
    """Each peer's state from its log: "serving", "serve_error: ..." or "not started"."""
    state = dict.fromkeys(names, "not started")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in names:
            with contextlib.suppress(OSError):
                facts = parse_facts((subject.suite_dir / f"{n}.log").read_text(errors="replace"))
                if "serving" in facts:
                    state[n] = "serving"
                elif "serve_error" in facts:
                    state[n] = f"serve_error: {facts['serve_error']}"
        if all(s != "not started" for s in state.values()):
            break
        time.sleep(0.02)
    return state


def _ifaces(fact: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in fact.split(";"):
        name, _, addrs = part.partition("=")
        if name:
            out[name] = [a for a in addrs.split(",") if a]
    return out


def _show(results: dict[str, ConnectResult], targets: list[str], what: dict[str, str] | None = None) -> str:
    parts = []
    for t in targets:
        r = results.get(t)
        label = f"{what[t]} " if what and t in what else ""
        parts.append(f"{label}{r.show() if r else t + ': not reported'}")
    return "; ".join(parts)


def check_bridge_isolation(subject: Subject, beacons: HostBeacons) -> list[str]:
    """The bridge case of test_network_isolation; returns its notes, fails or skips."""
    host = subject.host
    try:
        nets = host.networks()
    except NotSupported as e:
        not_supported(f"network mode bridge: {e}")
    token = secrets.token_hex(3)
    names = (f"suite-{token}-a", f"suite-{token}-b")
    probe_spec = host.make_spec(
        subject.spec(
            "check",
            ["/bin/true"],
            network={"mode": "bridge", "network": names[0], "ipv4": "10.214.1.10"},
        )
    )
    problems = subject.isolation.check(probe_spec)
    if problems:
        not_supported("network mode bridge: " + "; ".join(problems))
    if subject.probe_problem:
        cannot_run(subject.probe_problem)

    notes: list[str] = []
    used: set[int] = set()
    with contextlib.ExitStack() as stack:
        made: list[Net] = []
        for name in names:
            try:
                net = make_network(nets, name, used)
            except StockadeError as e:
                cannot_run(f"a bridged network cannot be made here: {e}")
            stack.callback(nets.delete, net.name)
            made.append(net)
        own, other = made
        extra = stack.enter_context(extra_host_interface(host.tag, used))
        port = stack.enter_context(host_listener(beacons.token))

        targets = Targets()
        for gw in own.gateways:
            targets.host[target(gw, port)] = "own gateway"
        for gw in other.gateways:
            targets.host[target(gw, port)] = "other network's gateway"
        if isinstance(extra, str):
            notes.append(extra)
        else:
            for a in extra[1]:
                targets.host[target(a, port)] = f"host interface {extra[0]}"
        for a in host_addresses():
            targets.host[target(a, port)] = "host address"

        # the host's side of the control: the same probe reaches the listener at every address
        control = subprocess.run(
            [str(_host_probe()), "--only", "-", "--connect-timeout", "1000"]
            + [x for t in targets.host for x in ("--connect", t)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        seen = parse_connects(control.stdout)
        unreached = [t for t in targets.host if not (seen.get(t) and seen[t].read == beacons.token)]
        if unreached:
            inconclusive(
                "control: the probe on the host itself does not reach the suite's wildcard listener at "
                + _show(seen, unreached, targets.host)
            )

        # the peers: one on each network, serving a token of their own on the same port
        peer_tokens = {"same": secrets.token_hex(8), "other": secrets.token_hex(8)}
        peers = {}
        for which, net, offset in (("same", own, 11), ("other", other, 12)):
            addrs = net.address(offset)
            inst = stack.enter_context(
                running(
                    subject,
                    [PROBE_PATH, "--serve", str(port), "--serve-token", peer_tokens[which]],
                    prefix=f"net-{which}",
                    network={"mode": "bridge", "network": net.name, **addrs},
                )
            )
            stack.callback(_unlink, subject.suite_dir / f"{inst.name}.log")
            peers[which] = inst.name
            for a in addrs.values():
                (targets.same_peer if which == "same" else targets.other_peer).append(target(a, port))
        serving = _wait_serving(subject, list(peers.values()))

        bridges = [n.bridge for n in made if n.bridge]
        forwarding = stack.enter_context(ipv4_forwarding(bridges))

        me = own.address(10)
        args = [
            PROBE_PATH,
            *replace(beacons, port=port, ifaces=host_interfaces()).args(),
            "--only",
            "foreign_network",
            "--connect-timeout",
            str(CONNECT_TIMEOUT_MS),
        ]
        for t in targets.all():
            args += ["--connect", t]
        t0 = time.monotonic()
        out = run_once(
            subject,
            args,
            prefix="net-probe",
            timeout=60,
            network={"mode": "bridge", "network": own.name, **me},
        )
        elapsed = time.monotonic() - t0

    results = parse_connects(out.stdout)
    checks = parse_results(out.stdout)
    facts = parse_facts(out.stdout)
    missing = [t for t in targets.all() if t not in results]
    assert not missing, f"the probe did not report {missing} (exit {out.status}: {out.stderr[:300]!r})"

    failures: list[str] = []  # most telling first: the report keeps the first 600 characters
    # 1. the host: nothing answers at any of its addresses
    leaks = [t for t in targets.host if results[t].connected]
    if leaks:
        failures.append(
            "reaches the host's wildcard listener at "
            + _grouped(results, {t: targets.host[t] for t in leaks}, beacons.token)
        )
    # 2. the other network
    crossed = [t for t in targets.other_peer if results[t].connected]
    if crossed:
        failures.append(
            "reaches the instance on another network at "
            + _grouped(results, dict.fromkeys(crossed, "its address"), peer_tokens["other"])
        )
    if facts.get("ns_net") == os.readlink("/proc/self/ns/net"):
        failures.append("is in the host's network namespace")
    # 3. nothing of the host's network inside: lo and the interface holding its own address
    seen_ifaces = _ifaces(facts.get("net_ifaces", ""))
    mine = [n for n, a in seen_ifaces.items() if set(me.values()) & set(a)]
    extra_inside = {n: a for n, a in seen_ifaces.items() if n not in ("lo", *mine)}
    foreign = {n: a for n, a in extra_inside.items() if a or n not in FALLBACK_DEVICES}
    if "lo" not in seen_ifaces or len(mine) != 1 or foreign:
        failures.append(
            f"sees interfaces other than lo and its own (holding {', '.join(me.values())}): "
            + ", ".join(sorted(seen_ifaces) or ["(none reported)"])
        )
    # 4. the probe's own checks from the bridged instance (host loopback at the same port,
    #    the abstract socket, the host's interfaces as they are now)
    for c in FOREIGN_CHECKS:
        r = checks.get(c)
        if r is None:
            failures.append(f"the probe did not report {c} (exit {out.status}: {out.stderr[:200]!r})")
        elif not r.forbidden:
            failures.append(f"{c}: {r.verdict} ({r.detail})")
    assert not failures, "a bridged instance " + "; ".join(failures)
    if extra_inside:
        notes.append(
            f"bridge: the namespace's own fallback devices inside: {', '.join(sorted(extra_inside))}"
        )

    # the control inside: the peer on the same network answers, with its token
    reached = [t for t in targets.same_peer if results[t].read == peer_tokens["same"]]
    if len(reached) != len(targets.same_peer):
        inconclusive(
            "control: the bridged instance does not reach the peer on its own network ("
            + _show(results, targets.same_peer)
            + f"; peer: {serving[peers['same']]}), so unreachable cannot be told from no network"
        )
    fwd = (
        f"IPv4 forwarding on on both bridges ({', '.join(forwarding)})" if forwarding else "forwarding as is"
    )
    notes.append(
        f"bridge, from a bridged instance (probe {elapsed:.1f} s): the host's wildcard listener refused or "
        f"timed out at {_grouped(results, targets.host)}; the other network's instance at "
        f"{_grouped(results, dict.fromkeys(targets.other_peer, 'its address'))} ({fwd}); interfaces inside: "
        f"{', '.join(sorted(seen_ifaces))}. Controls: the probe on the host reaches that listener at each "
        f"address; the same network's instance reached at {', '.join(targets.same_peer)}"
    )
    return notes


def _grouped(results: dict[str, ConnectResult], what: dict[str, str], token: str = "") -> str:
    """``port P: own gateway 10.0.0.1, fd00::1 (ETIMEDOUT); ...``: targets by kind, with their
    answers ("answered": connected and the expected ``token`` came back)."""

    def answer(r: ConnectResult) -> str:
        if not r.connected:
            return str(r.errno)
        return "answered" if token and r.read == token else f"connected, read {r.read!r}"

    kinds: dict[str, list[str]] = {}
    for t, kind in what.items():
        kinds.setdefault(kind, []).append(t)
    parts = []
    for kind, ts in kinds.items():
        answers = sorted({answer(results[t]) for t in ts if t in results})
        addrs = ", ".join(t.rsplit(":", 1)[0].strip("[]") for t in ts)
        parts.append(f"{kind} {addrs} ({'/'.join(answers)})")
    port = next(iter(what), ":?").rsplit(":", 1)[1]
    return f"port {port}: " + "; ".join(parts)


def _host_probe() -> Path:
    from .probe import probe_binary

    return probe_binary()


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
