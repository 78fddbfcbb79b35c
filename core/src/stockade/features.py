"""What a backend can declare: features (the seed's columns), restrictions and semantics.

Declarations are plain data so the conformance suite can measure them: a declared
feature that does not hold is a failure, not a footnote.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal


class Feature(enum.StrEnum):
    """The feature columns of the verified matrix."""

    FS_ISOLATION = "fs_isolation"
    COPY_ON_WRITE = "copy_on_write"
    SNAPSHOT = "snapshot"
    DISK_QUOTA = "disk_quota"
    IO_RATE_LIMIT = "io_rate_limit"
    MEMORY_LIMIT = "memory_limit"
    CPU_QUOTA = "cpu_quota"
    PIDS_LIMIT = "pids_limit"
    FREEZE = "freeze"
    NETWORK_ISOLATION = "network_isolation"
    CHECKPOINT = "checkpoint"
    LIVE_MIGRATION = "live_migration"
    COLD_MIGRATION = "cold_migration"
    USER_NAMESPACE = "user_namespace"
    TERMINAL = "terminal"
    DELEGATED_DATASET = "delegated_dataset"  # storage offers one, isolation hands it over


class Restriction(enum.StrEnum):
    """What is forbidden inside an instance by default (DESIGN.md, "The seed's restrictions").

    Each value is also the name of its relaxation in a spec's ``allow`` list, in the
    spirit of FreeBSD's ``allow.*`` jail parameters.
    """

    KERNEL_MODIFY = "kernel_modify"  # /dev/mem, kexec, iopl, CAP_SYS_RAWIO, bpf
    KMOD = "kmod"  # load / unload kernel modules
    MOUNT = "mount"  # mount / unmount
    MKNOD = "mknod"  # create device nodes
    RAW_SOCKETS = "raw_sockets"  # raw / packet sockets
    NET_ADMIN = "net_admin"  # change routes, links, firewall (of the instance's own stack)
    SYSCTL = "sysctl"  # write kernel parameters (/proc/sys, /sys)
    CHFLAGS = "chflags"  # immutable / append-only file flags
    FOREIGN_NETWORK = "foreign_network"  # network resources not the instance's (host netns)
    HOST_PROCESSES = "host_processes"  # see or signal host processes (host pid namespace)
    PTRACE = "ptrace"  # ptrace / process_vm_* (CAP_SYS_PTRACE)
    KEYRING = "keyring"  # kernel keyring syscalls
    SYS_TIME = "sys_time"  # set the system clock
    NEW_USERNS = "new_userns"  # create user namespaces inside the instance


@dataclass(frozen=True)
class Semantics:
    """How a backend implements what it declares; measured by the conformance suite."""

    quota_scope: Literal["referenced", "exclusive", "none"] = "none"
    io_limit_on: Literal["block_device", "dataset", "none"] = "none"
    restore: Literal["any_snapshot", "latest_only", "none"] = "none"
    migration: Literal["live", "cold", "none"] = "none"
    memory_tolerance: float = 0.1
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Probe:
    """Whether a backend can run on this host, and if not, why (one line)."""

    ok: bool
    reason: str = ""

    @classmethod
    def yes(cls) -> Probe:
        return cls(True, "")

    @classmethod
    def no(cls, reason: str) -> Probe:
        return cls(False, reason)
