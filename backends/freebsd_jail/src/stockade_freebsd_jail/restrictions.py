"""The seed's restrictions as jail parameters: what is enforced, what a spec may relax, and how.

A jail denies every privilege not on ``prison_priv_check()``'s allow-list, so most
restrictions hold by construction; the parameters below close what a new jail would
otherwise inherit (``JAIL_DEFAULT_ALLOW``) and open exactly what ``spec.allow`` relaxes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from stockade.features import Restriction as R

if TYPE_CHECKING:
    from .iovec import Params

# Enforced by every jail this backend creates.
ENFORCED: frozenset[R] = frozenset(
    {
        R.KERNEL_MODIFY,
        R.KMOD,
        R.MOUNT,
        R.MKNOD,
        R.RAW_SOCKETS,
        R.SYSCTL,
        R.CHFLAGS,
        R.FOREIGN_NETWORK,
        R.HOST_PROCESSES,
        R.KEYRING,
        R.SYS_TIME,
        R.NEW_USERNS,
    }
)

RELAXABLE: frozenset[R] = frozenset({R.MOUNT, R.RAW_SOCKETS, R.CHFLAGS, R.SYS_TIME, R.FOREIGN_NETWORK})

# Why the others cannot be relaxed in a jail (no allow.* grants them).
NOT_RELAXABLE: dict[R, str] = {
    R.KERNEL_MODIFY: "no jail parameter grants /dev/mem, /dev/io or kernel writes",
    R.KMOD: "kldload/kldunload are never permitted inside a jail",
    R.MKNOD: "a jail cannot create device nodes; its devices come from devfs and its ruleset",
    R.SYSCTL: "PRIV_SYSCTL_WRITE is never granted to a jail (only jail-scoped sysctls are writable)",
    R.HOST_PROCESSES: "a jail never sees or signals processes outside it",
    R.KEYRING: "FreeBSD has no kernel keyring (holds trivially)",
    R.NEW_USERNS: "FreeBSD has no user namespaces; child jails stay off (children.max=0)",
}

# Declared neither enforced nor relaxable, and why.
NOT_ENFORCED: dict[R, str] = {
    R.NET_ADMIN: "the kernel grants PRIV_NET_* to a vnet jail's root for its own stack "
    "(IP-restricted jails cannot change interfaces or routes)",
    R.PTRACE: "jail root may debug any process of its own jail; allow.nounprivileged_proc_debug "
    "only stops unprivileged users",
}

# Every allow.* flag of FreeBSD 13.0+, sent explicitly so nothing is inherited by accident.
# suser and reserved_ports stay on: root inside is root of its jail, as in a container.
BASE_ALLOW: dict[str, bool] = {
    "allow.set_hostname": False,
    "allow.sysvipc": False,
    "allow.raw_sockets": False,
    "allow.chflags": False,
    "allow.mount": False,
    "allow.quotas": False,
    "allow.socket_af": False,
    "allow.mlock": False,
    "allow.reserved_ports": True,
    "allow.read_msgbuf": False,
    "allow.unprivileged_proc_debug": False,
    "allow.suser": True,
}

DEFAULT_SECURELEVEL = 2
# securelevel >= 1 forbids clearing schg/sappnd; >= 2 forbids stepping the clock.
_SECURELEVEL_CAP = {R.CHFLAGS: 0, R.SYS_TIME: 1}


def securelevel(allow: Iterable[R], wanted: int = DEFAULT_SECURELEVEL) -> int:
    return min([wanted, *(_SECURELEVEL_CAP[r] for r in allow if r in _SECURELEVEL_CAP)])


def enforce_statfs(allow: Iterable[R]) -> int:
    # Mounting inside needs enforce_statfs < 2; 1 still hides mounts outside the jail's root.
    return 1 if R.MOUNT in set(allow) else 2


def allow_params(allow: Iterable[R], mount_fs: Iterable[str] = ("nullfs", "tmpfs")) -> Params:
    """The allow.* pairs: the base table with the spec's relaxations switched on."""
    allowed = set(allow)
    flags = dict(BASE_ALLOW)
    extra: Params = []
    if R.RAW_SOCKETS in allowed:
        flags["allow.raw_sockets"] = True
    if R.CHFLAGS in allowed:
        flags["allow.chflags"] = True
    if R.MOUNT in allowed:
        flags["allow.mount"] = True
        extra += [(f"allow.mount.{fs}", True) for fs in mount_fs]
    if R.SYS_TIME in allowed:
        # FreeBSD 14.0+ parameters: an older kernel answers "unknown parameter".
        extra += [("allow.settime", True), ("allow.adjtime", True)]
    return [*flags.items(), *extra]


def unrelaxable(allow: Iterable[R]) -> list[str]:
    """One line per relaxation a jail cannot give (relaxing what is not enforced is a no-op)."""
    return [
        f"allow: {r.value!r} cannot be relaxed in a FreeBSD jail: {NOT_RELAXABLE[r]}"
        for r in sorted(set(allow) & NOT_RELAXABLE.keys())
    ]
