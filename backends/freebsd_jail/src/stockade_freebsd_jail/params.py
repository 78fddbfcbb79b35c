"""A spec -> the jail_set(2) parameters, and a preflight that mirrors the kernel's own checks.

The preflight reports every problem at once, before anything is created, in the
kernel's terms (kern_jail_set): persist or attach, vnet excludes address lists,
ranges, lengths with their NUL, numeric names, address rules, ``path`` always sent.
"""

from __future__ import annotations

import ipaddress

from stockade.spec import InstanceSpec

from ._ffi import JAIL_ATTACH, JAIL_CREATE, JAIL_SYS_NEW, MAXHOSTNAMELEN, MAXPATHLEN
from .iovec import Params, Value, bool_name, cstr
from .options import JailOptions
from .restrictions import allow_params, enforce_statfs, securelevel

DEFAULTS = JailOptions()


def ruleset_for(opts: JailOptions, network: Params) -> int:
    vnet = any(n == "vnet" and v == JAIL_SYS_NEW for n, v in network)
    return opts.devfs_ruleset_vnet if vnet else opts.devfs_ruleset


def jail_params(
    spec: InstanceSpec, *, name: str, path: str, network: Params, opts: JailOptions = DEFAULTS
) -> Params:
    """The creation parameters, in a fixed order (golden-tested)."""
    return [
        ("name", name),
        ("path", path),
        ("host.hostname", spec.effective_hostname),
        ("persist", True),
        ("securelevel", securelevel(spec.allow, opts.securelevel)),
        ("enforce_statfs", enforce_statfs(spec.allow)),
        ("children.max", 0),
        ("devfs_ruleset", ruleset_for(opts, network)),
        # private SysV IPC key spaces, the jail's IPC namespace
        ("sysvmsg", JAIL_SYS_NEW),
        ("sysvsem", JAIL_SYS_NEW),
        ("sysvshm", JAIL_SYS_NEW),
        *network,
        *allow_params(spec.allow, opts.mount_fs),
    ]


def _int_in(problems: list[str], values: dict[str, Value], key: str, lo: int, hi: int) -> None:
    v = values.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int):
        problems.append(f"{key}: must be an integer, not {v!r}")
    elif not lo <= v <= hi:
        problems.append(f"{key}: {v} is out of range ({lo}..{hi})")


def _str_len(problems: list[str], values: dict[str, Value], key: str, limit: int) -> None:
    v = values.get(key)
    if isinstance(v, str):
        n = len(cstr(v)) if "\0" not in v else -1
        if n < 0:
            problems.append(f"{key}: must not contain NUL")
        elif n > limit:
            problems.append(f"{key}: {n} bytes with its NUL; the kernel allows {limit} (ENAMETOOLONG)")


def _addresses(problems: list[str], key: str, value: Value, v6: bool) -> None:
    if not isinstance(value, tuple):
        problems.append(f"{key}: must be a list of addresses")
        return
    if not value:
        problems.append(f"{key}: empty (disable the family with ip{6 if v6 else 4}=disable instead)")
    if len(value) > 255:
        problems.append(f"{key}: {len(value)} addresses; the kernel allows 255")
    seen: set[object] = set()
    for a in value:
        if v6 != isinstance(a, ipaddress.IPv6Address):
            problems.append(f"{key}: {a} is not an IPv{6 if v6 else 4} address")
            continue
        if a.is_unspecified:
            problems.append(f"{key}: {a} (the wildcard address) is not allowed")
        if not v6 and a == ipaddress.IPv4Address("255.255.255.255"):
            problems.append(f"{key}: {a} (the broadcast address) is not allowed")
        if a in seen:
            problems.append(f"{key}: {a} is listed twice")
        seen.add(a)


def preflight(params: Params, flags: int) -> list[str]:
    """Every reason ``jail_set(params, flags)`` would fail by the kernel's own rules."""
    problems: list[str] = []
    values: dict[str, Value] = {}
    bools: dict[str, bool] = {}
    for n, v in params:
        if isinstance(v, bool):
            if bools.get(n, v) != v:
                problems.append(f"{n}: sent both as {bool_name(n, True)!r} and {bool_name(n, False)!r}")
            bools[n] = v
        elif n in values:
            problems.append(f"{n}: sent twice")
        if n == "errmsg":
            problems.append("errmsg: is added by the call itself, last")
        values[n] = v
    create = bool(flags & JAIL_CREATE)
    if create and not flags & JAIL_ATTACH and values.get("persist") is not True:
        problems.append(
            "persist: a new jail must persist or attach (send persist, or create with JAIL_ATTACH)"
        )
    if create and "path" not in values:
        problems.append("path: must always be sent (the kernel would use / as the jail's root)")
    name = values.get("name")
    if isinstance(name, str):
        if not name:
            problems.append("name: must not be empty")
        elif name.isdigit():
            problems.append(f"name: {name!r} is numeric; the kernel takes numeric names as jids")
        elif "." in name:
            problems.append(f"name: {name!r} contains '.', which names a child of another jail")
    _str_len(problems, values, "name", MAXHOSTNAMELEN)
    for key in ("host.hostname", "host.domainname"):
        _str_len(problems, values, key, MAXHOSTNAMELEN)
    _str_len(problems, values, "path", MAXPATHLEN)
    path = values.get("path")
    if isinstance(path, str) and not path.startswith("/"):
        problems.append(f"path: {path!r} must be absolute")
    _int_in(problems, values, "enforce_statfs", 0, 2)
    _int_in(problems, values, "devfs_ruleset", 0, 65535)
    _int_in(problems, values, "securelevel", -1, 3)
    _int_in(problems, values, "children.max", 0, 2**31 - 1)
    for key in ("vnet", "ip4", "ip6", "sysvmsg", "sysvsem", "sysvshm"):
        _int_in(problems, values, key, 0, 2)
    if values.get("vnet") == 0:
        problems.append("vnet: 'disable' is not a valid value (new=1 or inherit=2)")
    vnet = values.get("vnet") == JAIL_SYS_NEW
    for key, v6 in (("ip4.addr", False), ("ip6.addr", True)):
        if key in values:
            _addresses(problems, key, values[key], v6)
            if vnet:
                problems.append(f"{key}: vnet jails cannot have IP address restrictions")
            family = values.get(key[:3])
            if family is not None and family != JAIL_SYS_NEW:
                problems.append(f"{key}: needs {key[:3]}=new, not {family}")
    return problems
