"""A thin ctypes layer over the Linux calls Python 3.11's ``os`` lacks.

Every function raises ``OSError(errno, "<call> <what>: <strerror>")`` so callers can
turn it into one line for the user. Nothing is loaded at import time: libc is
bound on first use (through ``stockade.linux.libc``, shared with the other backends).
"""

from __future__ import annotations

import ctypes
import os
import platform
from functools import cache

from stockade.linux import libc

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

CLONE_INTO_CGROUP = 0x200000000

KEYCTL_JOIN_SESSION_KEYRING = 1
CLOSE_RANGE_CLOEXEC = 1 << 2

_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Calls glibc has no wrapper for, by machine.
_SYSCALL_NR = {
    "x86_64": {"pivot_root": 155, "keyctl": 250, "clone3": 435},
    "aarch64": {"pivot_root": 41, "keyctl": 219, "clone3": 435},
}


@cache
def _nr(name: str) -> int:
    table = _SYSCALL_NR.get(platform.machine())
    if table is None:
        raise OSError(38, f"{name}: no syscall number known for {platform.machine()}")
    return table[name]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def unshare(flags: int) -> None:
    _check(libc().unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0, what: str = "") -> None:
    _check(libc().setns(ctypes.c_int(fd), ctypes.c_int(nstype)), f"setns {what or fd}")


def pivot_root(new_root: str, put_old: str) -> None:
    rc = libc().syscall(ctypes.c_long(_nr("pivot_root")), new_root.encode(), put_old.encode())
    _check(rc, f"pivot_root {new_root!r}")


def sethostname(name: str) -> None:
    b = name.encode()
    _check(libc().sethostname(b, ctypes.c_size_t(len(b))), f"sethostname {name!r}")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    rc: int = libc().prctl(
        ctypes.c_int(option),
        ctypes.c_ulong(arg2),
        ctypes.c_ulong(arg3),
        ctypes.c_ulong(arg4),
        ctypes.c_ulong(arg5),
    )
    return _check(rc, f"prctl({option})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(libc().capset(ctypes.byref(hdr), data), "capset")


def keyctl_join_session_keyring(name: str | None = None) -> int:
    arg = name.encode() if name else None
    rc = libc().syscall(ctypes.c_long(_nr("keyctl")), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), arg)
    return _check(rc, "keyctl(JOIN_SESSION_KEYRING)")


def close_range_cloexec(first: int) -> None:
    rc = libc().close_range(
        ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF), ctypes.c_int(CLOSE_RANGE_CLOEXEC)
    )
    _check(rc, "close_range")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_load_bpf(program: bytes) -> None:
    """Install a classic BPF program (8-byte sock_filter records) as a seccomp filter."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    rc = libc().prctl(
        ctypes.c_int(PR_SET_SECCOMP),
        ctypes.c_ulong(SECCOMP_MODE_FILTER),
        ctypes.byref(prog),
        ctypes.c_ulong(0),
        ctypes.c_ulong(0),
    )
    _check(rc, "seccomp filter load")


def single_threaded() -> bool:
    """This process has one thread (a fresh fork): what moves the caller moves it whole."""
    return len(os.listdir("/proc/self/task")) == 1


def set_child_subreaper() -> None:
    """Orphaned descendants (an instance's PID 1 once its launcher exits) reparent to us."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


def fork_into_cgroup(cgroup_fd: int, flags: int = 0) -> int:
    """``os.fork`` by clone3(CLONE_INTO_CGROUP): the child is born in that cgroup v2
    directory (plus ``flags``, e.g. CLONE_NEWPID). Returns 0 in the child, its pid in the
    parent; raises OSError (nothing forked) where the kernel refuses.

    Only for a single-threaded caller: unlike glibc's fork() this runs no atfork handlers
    and takes no malloc locks, so a lock held by another thread would stay held in the
    child. The interpreter's own fork hooks run as for ``os.fork``: the call is made with
    the GIL held (PyDLL) between PyOS_BeforeFork and PyOS_AfterFork_*, as posixmodule.c
    does around fork().
    """
    args = _CloneArgs(flags=flags | CLONE_INTO_CGROUP, exit_signal=17, cgroup=cgroup_fd)  # SIGCHLD
    nr = ctypes.c_long(_nr("clone3"))
    # Everything looked up first: between BeforeFork and AfterFork nothing may fail.
    api = ctypes.pythonapi
    before, child, parent = api.PyOS_BeforeFork, api.PyOS_AfterFork_Child, api.PyOS_AfterFork_Parent
    syscall = _libc_with_gil().syscall
    before()
    pid = syscall(nr, ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        child()
        return 0
    err = ctypes.get_errno()
    parent()
    if pid < 0:
        raise OSError(err, f"clone3(CLONE_INTO_CGROUP): {os.strerror(err)}")
    return int(pid)


@cache
def _libc_with_gil() -> ctypes.PyDLL:
    return ctypes.PyDLL(None, use_errno=True)
