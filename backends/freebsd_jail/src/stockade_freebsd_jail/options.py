"""The backend options (``BackendConfig.options``) that shape every jail.

Kept apart from the parameter builders so constructing the backend imports nothing else
(plugin load and ``probe()`` stay cheap on every host).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from ._ffi import MAXLOGNAME
from .restrictions import DEFAULT_SECURELEVEL

DEVFS_RULESET = 4  # devfsrules_jail in /etc/defaults/devfs.rules
DEVFS_RULESET_VNET = 5  # devfsrules_jail_vnet (jail + pf); Bastille defines 13 with bpf too
NET_OPTIONS = ("prefixlen", "gateway", "interface")


@dataclass(frozen=True)
class JailOptions:
    securelevel: int = DEFAULT_SECURELEVEL
    devfs_ruleset: int = DEVFS_RULESET
    devfs_ruleset_vnet: int = DEVFS_RULESET_VNET
    mount_fs: tuple[str, ...] = ("nullfs", "tmpfs")
    stack: Literal["vnet", "ip"] = "vnet"
    login_class: str = "default"  # login.conf class of every process entering the jail

    def problems(self) -> list[str]:
        """What the kernel would refuse in these options (reported by ``check()``)."""
        out = []
        if self.stack not in ("vnet", "ip"):
            out.append(f"option stack: {self.stack!r} is neither 'vnet' nor 'ip'")
        size = len(self.login_class.encode()) + 1
        if not self.login_class or "\0" in self.login_class or size > MAXLOGNAME:
            out.append(
                f"option login_class: {self.login_class!r} must be 1 to {MAXLOGNAME - 1} bytes "
                "(MAXLOGNAME; setloginclass(2) answers ENAMETOOLONG)"
            )
        return out


def parse_options(raw: Mapping[str, Any]) -> tuple[JailOptions, dict[str, Any]]:
    """(jail options, network plan options); keys of neither are ignored."""
    known = {f.name: raw[f.name] for f in fields(JailOptions) if f.name in raw}
    if "mount_fs" in known:
        known["mount_fs"] = tuple(known["mount_fs"])
    return JailOptions(**known), {k: raw[k] for k in NET_OPTIONS if k in raw}
