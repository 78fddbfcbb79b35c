# ruff: noqa: SIM115
# Run by the host's system Python inside an instance; stdlib only, no typing.
"""Runs inside an instance (host Python bound at /usr): reports what the instance may do."""

import ctypes
import errno
import json
import os
import socket
import sys

libc = ctypes.CDLL(None, use_errno=True)
NR = {
    "init_module": 175,
    "finit_module": 313,
    "keyctl": 250,
    "unshare": 272,
    "ptrace": 101,
    "clock_settime": 227,
    "bpf": 321,
}
r: dict[str, object] = {}


def attempt(name, fn):
    try:
        fn()
        r[name] = "ok"
    except OSError as e:
        r[name] = errno.errorcode.get(e.errno, str(e.errno))


def call(rc):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


def sc(name, *args):
    return call(libc.syscall(ctypes.c_long(NR[name]), *args))


r["fds"] = sorted(int(x) for x in os.listdir("/proc/self/fd"))
r["pid"] = os.getpid()
r["pids"] = sorted(int(d) for d in os.listdir("/proc") if d.isdigit())
r["hostname"] = socket.gethostname()
r["status"] = {k: v.strip() for k, _, v in (line.partition(":") for line in open("/proc/self/status")) if v}
r["mountinfo"] = open("/proc/self/mountinfo").read()
attempt("mount", lambda: call(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)))
attempt("mknod", lambda: os.mknod("/dev/probe-null", 0o20666, os.makedev(1, 3)))
attempt("raw_socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close())
attempt("packet_socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close())
attempt("init_module", lambda: sc("init_module", None, ctypes.c_ulong(0), b""))
attempt("finit_module", lambda: sc("finit_module", ctypes.c_int(-1), b"", 0))
# KEYCTL_GET_KEYRING_ID (0) of KEY_SPEC_SESSION_KEYRING (-3), without creating one
attempt("keyctl", lambda: r.__setitem__("session_keyring", sc("keyctl", 0, ctypes.c_int(-3), 0)))
attempt("unshare_user", lambda: sc("unshare", ctypes.c_int(0x10000000)))
attempt("ptrace", lambda: sc("ptrace", ctypes.c_long(16), ctypes.c_long(1), None, None))
attempt("sysctl_write", lambda: open("/proc/sys/kernel/domainname", "w").write("x"))
attempt("sys_write", lambda: open("/sys/kernel/uevent_helper", "w").write(""))
attempt("personality_bad", lambda: call(libc.personality(ctypes.c_ulong(0x0040000))))
attempt("personality_query", lambda: call(libc.personality(ctypes.c_ulong(0xFFFFFFFF))))
r["masked"] = {
    p: (sorted(os.listdir(p)) if os.path.isdir(p) else open(p, "rb").read(64).decode())
    for p in (
        "/proc/keys",
        "/proc/timer_list",
        "/proc/acpi",
        "/sys/firmware",
        "/proc/kcore",
        "/proc/sched_debug",
    )
    if os.path.exists(p)
}
r["lo_flags"] = open("/sys/class/net/lo/flags").read().strip()
json.dump(r, sys.stdout)
