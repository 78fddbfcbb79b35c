"""InstanceSpec and its parts: parsed and validated once, at the boundary.

``InstanceSpec.from_dict`` accepts the TOML shape (see docs/spec.md) and reports
every problem at once, each with its field path; backends only ever see a valid,
frozen spec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from .errors import SpecError
from .features import Restriction
from .limits import IO_LIMITS, QUOTA_LIMITS

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}

DEFAULT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}

NetworkMode = Literal["none", "loopback", "bridge", "host"]


def parse_size(value: object) -> int:
    """'64M' -> 67108864. Binary units like docker and podman (k = 1024). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size (negative)")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and (
            m.group(3).lower() in ("", "b", "ib") and not (m.group(3).lower() == "ib" and not m.group(2))
        ):
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"{value!r} is not a size (use bytes or a number with K, M, G, T: '64M')")


def format_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n}{unit}" if unit == "" else f"{n:.4g}{unit}"
        n = n / 1024  # type: ignore[assignment]
    return str(n)


# --- parts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    args: tuple[str, ...] = ("/bin/sh",)
    env: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENV))
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    terminal: bool = False
    umask: int = 0o022


@dataclass(frozen=True)
class IOLimits:
    """Per-second limits on the block device behind the instance's storage."""

    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None

    def any(self) -> bool:
        return any(getattr(self, f) is not None for f in IO_LIMITS)


@dataclass(frozen=True)
class Resources:
    memory: int | None = None  # bytes; hard limit
    memory_swap: int | None = None  # bytes of memory + swap (docker semantics); -1 = unlimited
    memory_reservation: int | None = None  # soft limit
    cpus: float | None = None  # CPU quota in cores (0.5 = half a core)
    cpu_period_us: int = 100_000
    cpu_weight: int | None = None  # 1..10000 (cgroup v2 scale; mapped to shares on v1)
    cpuset_cpus: str | None = None  # "0-1,3"
    cpuset_mems: str | None = None
    pids: int | None = None
    disk: int | None = None  # bytes of root file system (storage quota)
    io: IOLimits = field(default_factory=IOLimits)

    def any_cgroup_limit(self) -> bool:
        return any(getattr(self, f) is not None for f in QUOTA_LIMITS) or self.io.any()


@dataclass(frozen=True)
class Mount:
    target: str
    source: str = ""
    type: Literal["bind", "tmpfs"] = "bind"
    readonly: bool = False
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Publish:
    host_port: int
    port: int
    protocol: Literal["tcp", "udp"] = "tcp"
    host_ip: str = "127.0.0.1"


@dataclass(frozen=True)
class Network:
    mode: NetworkMode = "loopback"
    network: str | None = None  # named network for mode = "bridge"
    ipv4: str | None = None  # static address on that network
    ipv6: str | None = None
    mtu: int | None = None
    publish: tuple[Publish, ...] = ()
    dns: tuple[str, ...] = ()


@dataclass(frozen=True)
class IdMap:
    container_id: int
    host_id: int
    size: int


@dataclass(frozen=True)
class UserNamespace:
    uid_map: tuple[IdMap, ...] = (IdMap(0, 100000, 65536),)
    gid_map: tuple[IdMap, ...] = (IdMap(0, 100000, 65536),)


@dataclass(frozen=True)
class Backends:
    isolation: str | None = None
    quota: str | None = None
    storage: str | None = None


@dataclass(frozen=True)
class InstanceSpec:
    name: str
    image: str = "default"
    hostname: str | None = None
    process: Process = field(default_factory=Process)
    resources: Resources = field(default_factory=Resources)
    mounts: tuple[Mount, ...] = ()
    network: Network = field(default_factory=Network)
    allow: frozenset[Restriction] = frozenset()
    user_namespace: UserNamespace | None = None
    readonly_rootfs: bool = False
    # a dataset of its own that the instance manages (ZFS delegation: `zfs jail` on FreeBSD)
    delegate_dataset: bool = False
    backends: Backends = field(default_factory=Backends)
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: float = 10.0

    @property
    def effective_hostname(self) -> str:
        return self.hostname or self.name[:63]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceSpec:
        """Build a validated spec from the TOML/JSON shape; raise SpecError with every problem."""
        p = _Problems()
        spec = _build(p, data)
        p.raise_if_any()
        assert spec is not None
        return spec

    @classmethod
    def from_toml(cls, path: str, overrides: Mapping[str, Any] | None = None) -> InstanceSpec:
        import tomllib

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError as e:
            raise SpecError([("", f"spec file {path!r} not found")]) from e
        except tomllib.TOMLDecodeError as e:
            raise SpecError([("", f"spec file {path!r} is not valid TOML: {e}")]) from e
        return cls.from_dict(merge(data, overrides or {}))

    def to_dict(self) -> dict[str, Any]:
        """The inverse of from_dict (JSON/TOML-safe)."""
        d = asdict(self)
        d["allow"] = sorted(str(a) for a in self.allow)
        d["process"]["args"] = list(self.process.args)
        d["process"]["env"] = dict(self.process.env)
        d["labels"] = dict(self.labels)
        d["process"]["additional_gids"] = list(self.process.additional_gids)
        d["mounts"] = [dict(m, options=list(m["options"])) for m in d["mounts"]]
        net = d["network"]
        net["publish"] = [f"{x.host_ip}:{x.host_port}:{x.port}/{x.protocol}" for x in self.network.publish]
        net["dns"] = list(net["dns"])
        if self.user_namespace is not None:
            d["user_namespace"] = {
                "uid_map": [list(asdict(m).values()) for m in self.user_namespace.uid_map],
                "gid_map": [list(asdict(m).values()) for m in self.user_namespace.gid_map],
            }
        out: dict[str, Any] = _drop_none(d)
        return out

    def with_name(self, name: str) -> InstanceSpec:
        return replace(self, name=name)


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two spec dicts; values in ``over`` win."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _drop_none(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    if isinstance(d, list):
        return [_drop_none(v) for v in d]
    return d


# --- validation -------------------------------------------------------------------------------


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, msg: str) -> None:
        self.items.append((path, msg))

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)


def _known(p: _Problems, path: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for k in data:
        if k not in allowed:
            hint = _closest(k, allowed)
            where = f"{path}.{k}" if path else str(k)
            p.add(where, "unknown field" + (f" (did you mean {hint!r}?)" if hint else ""))


def _closest(word: str, options: Sequence[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.75)
    return m[0] if m else None


def _table(p: _Problems, path: str, v: Any) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        p.add(path, f"must be a table, not {type(v).__name__}")
        return {}
    return v


def _str(p: _Problems, path: str, v: Any, default: str | None = None) -> str | None:
    if v is None:
        return default
    if not isinstance(v, str):
        p.add(path, f"must be a string, not {type(v).__name__}")
        return default
    return v


def _bool(p: _Problems, path: str, v: Any, default: bool) -> bool:
    if v is None:
        return default
    if not isinstance(v, bool):
        p.add(path, f"must be true or false, not {v!r}")
        return default
    return v


def _int(p: _Problems, path: str, v: Any, lo: int | None = None, hi: int | None = None) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and v.strip().lstrip("-").isdigit():
            v = int(v)
        else:
            p.add(path, f"{v!r} is not an integer")
            return None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        p.add(path, f"{v} is out of range ({rng})")
        return None
    return int(v)


def _size(p: _Problems, path: str, v: Any, minimum: int = 0) -> int | None:
    if v is None:
        return None
    try:
        n = parse_size(v)
    except ValueError as e:
        p.add(path, str(e))
        return None
    if n < minimum:
        p.add(path, f"{v!r} is too small (minimum {format_size(minimum)})")
        return None
    return n


def _abs_path(p: _Problems, path: str, v: Any) -> str | None:
    s = _str(p, path, v)
    if s is None:
        return None
    if not s.startswith("/"):
        p.add(path, f"{s!r} must be an absolute path")
        return None
    if "\0" in s or any(part == ".." for part in s.split("/")):
        p.add(path, f"{s!r} must not contain '..' or NUL")
        return None
    return s


def _str_list(p: _Problems, path: str, v: Any) -> tuple[str, ...] | None:
    if v is None:
        return None
    if isinstance(v, str) or not isinstance(v, Sequence) or not all(isinstance(x, str) for x in v):
        p.add(path, "must be a list of strings")
        return None
    return tuple(v)


def _build(p: _Problems, data: Any) -> InstanceSpec | None:
    if not isinstance(data, Mapping):
        p.add("", "spec must be a table")
        return None
    top = [f.name for f in fields(InstanceSpec)]
    _known(p, "", data, top)

    name = _str(p, "name", data.get("name"))
    if name is None:
        if "name" not in data:
            p.add("name", "is required")
        name = "invalid"
    elif not NAME_RE.match(name):
        p.add(
            "name",
            f"{name!r} is not a valid name (letters, digits, '_', '.', '-'; 1-63 chars, "
            "starting with a letter or digit)",
        )

    image = _str(p, "image", data.get("image"), "default") or "default"
    if not NAME_RE.match(image.replace("/", "_").replace(":", "_")):
        p.add("image", f"{image!r} is not a valid image name")

    hostname = _str(p, "hostname", data.get("hostname"))
    if hostname is not None and not HOSTNAME_RE.match(hostname):
        p.add("hostname", f"{hostname!r} is not a valid host name (RFC 1123, at most 64 chars)")

    process = _process(p, _table(p, "process", data.get("process")))
    resources = _resources(p, _table(p, "resources", data.get("resources")))
    mounts = _mounts(p, data.get("mounts"))
    network = _network(p, _table(p, "network", data.get("network")))
    allow = _allow(p, data.get("allow"))
    userns = _userns(p, data.get("user_namespace"))
    readonly = _bool(p, "readonly_rootfs", data.get("readonly_rootfs"), False)
    delegate = _bool(p, "delegate_dataset", data.get("delegate_dataset"), False)

    b = _table(p, "backends", data.get("backends"))
    _known(p, "backends", b, ["isolation", "quota", "storage"])
    backends = Backends(
        isolation=_str(p, "backends.isolation", b.get("isolation")),
        quota=_str(p, "backends.quota", b.get("quota")),
        storage=_str(p, "backends.storage", b.get("storage")),
    )

    labels_raw = _table(p, "labels", data.get("labels"))
    labels: dict[str, str] = {}
    for k, v in labels_raw.items():
        if not isinstance(v, str):
            p.add(f"labels.{k}", "must be a string")
        else:
            labels[str(k)] = v

    st = data.get("stop_timeout", 10.0)
    if isinstance(st, bool) or not isinstance(st, int | float) or st < 0:
        p.add("stop_timeout", f"{st!r} must be a non-negative number of seconds")
        st = 10.0

    return InstanceSpec(
        name=name,
        image=image,
        hostname=hostname,
        process=process,
        resources=resources,
        mounts=mounts,
        network=network,
        allow=allow,
        user_namespace=userns,
        readonly_rootfs=readonly,
        delegate_dataset=delegate,
        backends=backends,
        labels=labels,
        stop_timeout=float(st),
    )


def _process(p: _Problems, d: Mapping[str, Any]) -> Process:
    _known(
        p, "process", d, ["args", "env", "cwd", "uid", "gid", "user", "additional_gids", "terminal", "umask"]
    )
    args = _str_list(p, "process.args", d.get("args"))
    if args is not None and not args:
        p.add("process.args", "must not be empty")
        args = None
    env: dict[str, str] = dict(DEFAULT_ENV)
    raw_env = d.get("env")
    if isinstance(raw_env, Mapping):
        for k, v in raw_env.items():
            if not isinstance(v, str) or "=" in str(k) or not k:
                p.add(f"process.env.{k}", 'must be NAME = "string"')
            else:
                env[str(k)] = v
    elif isinstance(raw_env, Sequence) and not isinstance(raw_env, str):
        for i, item in enumerate(raw_env):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                p.add(f"process.env[{i}]", f"{item!r} must be NAME=VALUE")
            else:
                k, _, v = item.partition("=")
                env[k] = v
    elif raw_env is not None:
        p.add("process.env", "must be a table or a list of NAME=VALUE")
    cwd = _abs_path(p, "process.cwd", d.get("cwd")) or "/"
    uid = _int(p, "process.uid", d.get("uid"), 0, 2**32 - 2)
    gid = _int(p, "process.gid", d.get("gid"), 0, 2**32 - 2)
    user = d.get("user")
    if user is not None:
        u, _, g = str(user).partition(":")
        uid = _int(p, "process.user", u, 0, 2**32 - 2)
        gid = _int(p, "process.user", g, 0, 2**32 - 2) if g else (uid or 0)
    gids_raw = d.get("additional_gids") or []
    gids: list[int] = []
    if not isinstance(gids_raw, list):
        p.add("process.additional_gids", "must be a list of integers")
    else:
        for i, g2 in enumerate(gids_raw):
            v = _int(p, f"process.additional_gids[{i}]", g2, 0, 2**32 - 2)
            if v is not None:
                gids.append(v)
    umask = _int(p, "process.umask", d.get("umask"), 0, 0o777)
    return Process(
        args=args or ("/bin/sh",),
        env=env,
        cwd=cwd,
        uid=uid or 0,
        gid=gid or 0,
        additional_gids=tuple(gids),
        terminal=_bool(p, "process.terminal", d.get("terminal"), False),
        umask=0o022 if umask is None else umask,
    )


def _resources(p: _Problems, d: Mapping[str, Any]) -> Resources:
    _known(
        p,
        "resources",
        d,
        [
            "memory",
            "memory_swap",
            "memory_reservation",
            "cpus",
            "cpu_period_us",
            "cpu_weight",
            "cpuset_cpus",
            "cpuset_mems",
            "pids",
            "disk",
            "io",
        ],
    )
    memory = _size(p, "resources.memory", d.get("memory"), minimum=6 << 20)
    swap_raw = d.get("memory_swap")
    swap = -1 if swap_raw in (-1, "-1") else _size(p, "resources.memory_swap", swap_raw)
    if swap is not None and swap != -1:
        if memory is None:
            p.add("resources.memory_swap", "needs resources.memory to be set")
        elif swap < memory:
            p.add("resources.memory_swap", "must be at least resources.memory (it is memory + swap)")
    cpus_raw = d.get("cpus")
    cpus: float | None = None
    if cpus_raw is not None:
        try:
            if isinstance(cpus_raw, bool):
                raise ValueError
            cpus = float(cpus_raw)
            if not (0.01 <= cpus <= 4096):
                p.add("resources.cpus", f"{cpus_raw!r} is out of range (0.01..4096 cores)")
                cpus = None
        except (TypeError, ValueError):
            p.add("resources.cpus", f"{cpus_raw!r} is not a number of cores (like 0.5)")
    period = _int(p, "resources.cpu_period_us", d.get("cpu_period_us"), 1000, 1_000_000)
    cpuset_re = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
    cpuset_cpus = _str(p, "resources.cpuset_cpus", d.get("cpuset_cpus"))
    if cpuset_cpus is not None and not cpuset_re.match(cpuset_cpus):
        p.add("resources.cpuset_cpus", f"{cpuset_cpus!r} is not a CPU list (like '0-1,3')")
    cpuset_mems = _str(p, "resources.cpuset_mems", d.get("cpuset_mems"))
    if cpuset_mems is not None and not cpuset_re.match(cpuset_mems):
        p.add("resources.cpuset_mems", f"{cpuset_mems!r} is not a node list (like '0')")
    io = _table(p, "resources.io", d.get("io"))
    _known(p, "resources.io", io, ["read_bps", "write_bps", "read_iops", "write_iops"])
    return Resources(
        memory=memory,
        memory_swap=swap,
        memory_reservation=_size(p, "resources.memory_reservation", d.get("memory_reservation")),
        cpus=cpus,
        cpu_period_us=period or 100_000,
        cpu_weight=_int(p, "resources.cpu_weight", d.get("cpu_weight"), 1, 10000),
        cpuset_cpus=cpuset_cpus,
        cpuset_mems=cpuset_mems,
        pids=_int(p, "resources.pids", d.get("pids"), 1, 2**22),
        disk=_size(p, "resources.disk", d.get("disk"), minimum=1 << 20),
        io=IOLimits(
            read_bps=_size(p, "resources.io.read_bps", io.get("read_bps"), minimum=1),
            write_bps=_size(p, "resources.io.write_bps", io.get("write_bps"), minimum=1),
            read_iops=_int(p, "resources.io.read_iops", io.get("read_iops"), 1),
            write_iops=_int(p, "resources.io.write_iops", io.get("write_iops"), 1),
        ),
    )


def _mounts(p: _Problems, raw: Any) -> tuple[Mount, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        p.add("mounts", "must be a list of tables ([[mounts]])")
        return ()
    out: list[Mount] = []
    for i, m in enumerate(raw):
        path = f"mounts[{i}]"
        d = _table(p, path, m)
        _known(p, path, d, ["target", "source", "type", "readonly", "options"])
        target = _abs_path(p, f"{path}.target", d.get("target"))
        if target is None and "target" not in d:
            p.add(f"{path}.target", "is required")
        mtype = d.get("type", "bind")
        if mtype not in ("bind", "tmpfs"):
            p.add(f"{path}.type", f"{mtype!r} is not one of 'bind', 'tmpfs'")
            mtype = "bind"
        source = _str(p, f"{path}.source", d.get("source"), "") or ""
        if mtype == "bind":
            if not source:
                p.add(f"{path}.source", "is required for a bind mount")
            elif not source.startswith("/"):
                p.add(f"{path}.source", f"{source!r} must be an absolute host path")
        opts = _str_list(p, f"{path}.options", d.get("options")) or ()
        if target:
            out.append(
                Mount(
                    target=target,
                    source=source,
                    type=mtype,
                    readonly=_bool(p, f"{path}.readonly", d.get("readonly"), False),
                    options=opts,
                )
            )
    return tuple(out)


def parse_publish(value: str) -> Publish:
    """'8080:80/tcp' or '127.0.0.1:8080:80' -> Publish. Raises ValueError."""
    spec, _, proto = value.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise ValueError(f"{value!r}: protocol must be tcp or udp")
    parts = spec.rsplit(":", 2)
    if len(parts) == 2:
        host_ip, hp, cp = "127.0.0.1", parts[0], parts[1]
    elif len(parts) == 3:
        host_ip, hp, cp = parts
    else:
        raise ValueError(f"{value!r} is not HOSTPORT:PORT[/tcp|udp]")
    if not (hp.isdigit() and cp.isdigit() and 0 < int(hp) < 65536 and 0 < int(cp) < 65536):
        raise ValueError(f"{value!r}: ports must be 1..65535")
    return Publish(host_port=int(hp), port=int(cp), protocol=proto, host_ip=host_ip)  # type: ignore[arg-type]


def _network(p: _Problems, d: Mapping[str, Any]) -> Network:
    _known(p, "network", d, ["mode", "network", "ipv4", "ipv6", "mtu", "publish", "dns"])
    mode = d.get("mode", "loopback")
    if mode not in ("none", "loopback", "bridge", "host"):
        p.add("network.mode", f"{mode!r} is not one of 'none', 'loopback', 'bridge', 'host'")
        mode = "loopback"
    network = _str(p, "network.network", d.get("network"))
    if network is not None and mode != "bridge":
        p.add("network.network", "only applies to mode = 'bridge'")
    ipv4 = _str(p, "network.ipv4", d.get("ipv4"))
    ipv6 = _str(p, "network.ipv6", d.get("ipv6"))
    import ipaddress

    for key, val, cls in (("ipv4", ipv4, ipaddress.IPv4Address), ("ipv6", ipv6, ipaddress.IPv6Address)):
        if val is not None:
            try:
                cls(val)
            except ValueError:
                p.add(f"network.{key}", f"{val!r} is not an IP{key[2:]} address")
    publish: list[Publish] = []
    for i, item in enumerate(d.get("publish") or []):
        try:
            publish.append(parse_publish(str(item)))
        except ValueError as e:
            p.add(f"network.publish[{i}]", str(e))
    if publish and mode not in ("bridge",):
        p.add("network.publish", "needs network.mode = 'bridge'")
    dns = _str_list(p, "network.dns", d.get("dns")) or ()
    return Network(
        mode=mode,
        network=network,
        ipv4=ipv4,
        ipv6=ipv6,
        mtu=_int(p, "network.mtu", d.get("mtu"), 576, 65535),
        publish=tuple(publish),
        dns=dns,
    )


def _allow(p: _Problems, raw: Any) -> frozenset[Restriction]:
    if raw is None:
        return frozenset()
    items = _str_list(p, "allow", raw)
    out: set[Restriction] = set()
    valid = [r.value for r in Restriction]
    for i, item in enumerate(items or ()):
        name = item.removeprefix("allow.")
        if name not in valid:
            hint = _closest(name, valid)
            p.add(
                f"allow[{i}]",
                f"{item!r} is not a known restriction"
                + (f" (did you mean {hint!r}?)" if hint else f" (one of: {', '.join(valid)})"),
            )
        else:
            out.add(Restriction(name))
    return frozenset(out)


def _userns(p: _Problems, raw: Any) -> UserNamespace | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return UserNamespace()
    d = _table(p, "user_namespace", raw)
    _known(p, "user_namespace", d, ["uid_map", "gid_map"])

    def maps(key: str) -> tuple[IdMap, ...]:
        val = d.get(key)
        if val is None:
            return (IdMap(0, 100000, 65536),)
        out: list[IdMap] = []
        if not isinstance(val, list):
            p.add(f"user_namespace.{key}", "must be a list of [container_id, host_id, size]")
            return ()
        for i, m in enumerate(val):
            if (
                not isinstance(m, list)
                or len(m) != 3
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in m)
            ):
                p.add(f"user_namespace.{key}[{i}]", f"{m!r} must be [container_id, host_id, size]")
            elif m[2] == 0:
                p.add(f"user_namespace.{key}[{i}]", "size must be at least 1")
            else:
                out.append(IdMap(*m))
        return tuple(out)

    return UserNamespace(uid_map=maps("uid_map"), gid_map=maps("gid_map"))
