"""Capabilities: the default set an instance keeps, what each relaxation adds, and applying it.

The default is docker's: enough to run a normal init-less workload as root inside
(change ownership, bind low ports, switch users), nothing that reaches the host kernel.
"""

from __future__ import annotations

from functools import cache

from stockade.features import Restriction

from . import syscalls

CAPS: dict[str, int] = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "LINUX_IMMUTABLE": 9,
    "NET_BIND_SERVICE": 10,
    "NET_BROADCAST": 11,
    "NET_ADMIN": 12,
    "NET_RAW": 13,
    "IPC_LOCK": 14,
    "IPC_OWNER": 15,
    "SYS_MODULE": 16,
    "SYS_RAWIO": 17,
    "SYS_CHROOT": 18,
    "SYS_PTRACE": 19,
    "SYS_PACCT": 20,
    "SYS_ADMIN": 21,
    "SYS_BOOT": 22,
    "SYS_NICE": 23,
    "SYS_RESOURCE": 24,
    "SYS_TIME": 25,
    "SYS_TTY_CONFIG": 26,
    "MKNOD": 27,
    "LEASE": 28,
    "AUDIT_WRITE": 29,
    "AUDIT_CONTROL": 30,
    "SETFCAP": 31,
    "MAC_OVERRIDE": 32,
    "MAC_ADMIN": 33,
    "SYSLOG": 34,
    "WAKE_ALARM": 35,
    "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37,
    "PERFMON": 38,
    "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}

DEFAULT_CAPS: frozenset[str] = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FSETID",
        "FOWNER",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "SETFCAP",
        "NET_BIND_SERVICE",
        "SYS_CHROOT",
        "KILL",
        "AUDIT_WRITE",
    }
)

RELAXATION_CAPS: dict[Restriction, frozenset[str]] = {
    Restriction.MOUNT: frozenset({"SYS_ADMIN"}),
    Restriction.MKNOD: frozenset({"MKNOD"}),
    Restriction.RAW_SOCKETS: frozenset({"NET_RAW"}),
    Restriction.NET_ADMIN: frozenset({"NET_ADMIN"}),
    Restriction.CHFLAGS: frozenset({"LINUX_IMMUTABLE"}),
    Restriction.KMOD: frozenset({"SYS_MODULE"}),
    # bpf programs and CPU-wide perf events reach into the running kernel as much as /dev/mem
    Restriction.KERNEL_MODIFY: frozenset({"SYS_RAWIO", "SYS_BOOT", "BPF", "PERFMON"}),
    Restriction.PTRACE: frozenset({"SYS_PTRACE"}),
    Restriction.SYS_TIME: frozenset({"SYS_TIME"}),
}


def caps_for(allow: frozenset[Restriction]) -> frozenset[str]:
    out = set(DEFAULT_CAPS)
    for r in allow:
        out |= RELAXATION_CAPS.get(r, frozenset())
    return frozenset(out)


def mask_of(names: frozenset[str]) -> int:
    m = 0
    for n in names:
        m |= 1 << CAPS[n]
    return m


@cache
def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAPS.values())


def apply(mask: int, uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """Switch to uid/gid/groups and keep exactly ``mask`` (bounding, permitted, effective,
    inheritable); the ambient set is cleared, so a non-root user execs with no effective
    capabilities, as under docker."""
    import os

    for cap in range(last_cap() + 1):
        if not mask & (1 << cap):
            try:
                syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
            except OSError as e:
                # EINVAL: a capability this kernel does not know; nothing to drop.
                if e.errno != 22:
                    raise
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    # Keep the permitted set across the uid change, then restore effective below.
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    syscalls.capset(mask, mask, mask)
    syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 0)
