"""Run a program in a hand-made restricted environment, roughly a default container.

Usage: python restricted.py PROGRAM [ARGS...]   (root, x86_64)

New mount, pid, net, uts, ipc and cgroup namespaces; a fresh /proc with
/proc/sys read-only; /sys read-only (its submounts, e.g. the cgroup v1
hierarchies, stay as they are); a new session keyring; the capability set
of a default Docker container minus CAP_NET_RAW and CAP_MKNOD; no_new_privs; a
seccomp filter refusing keyctl/add_key/request_key and unshare(CLONE_NEWUSER)
with EPERM. pid 1 is this script (an init that waits), the program is pid 2.
Only stdlib + ctypes: the tests use it to see the probe report "forbidden".
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# x86_64 only (the test skips elsewhere)
AUDIT_ARCH_X86_64 = 0xC000003E
NR_ADD_KEY, NR_REQUEST_KEY, NR_KEYCTL, NR_UNSHARE, NR_CAPSET = 248, 249, 250, 272, 126

# A default Docker container's capabilities, minus NET_RAW and MKNOD.
KEEP_CAPS = {
    0,  # CHOWN
    1,  # DAC_OVERRIDE
    3,  # FOWNER
    4,  # FSETID
    5,  # KILL
    6,  # SETGID
    7,  # SETUID
    8,  # SETPCAP
    10,  # NET_BIND_SERVICE
    18,  # SYS_CHROOT
    29,  # AUDIT_WRITE
    31,  # SETFCAP
}

HOSTNAME = b"stockade-probe-restricted"

libc = ctypes.CDLL(None, use_errno=True)


def check(result: int, what: str) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src: str | None, dst: str, fstype: str | None, flags: int) -> None:
    enc = [s.encode() if s is not None else None for s in (src, dst, fstype)]
    check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), None), f"mount {dst}")


def seccomp_filter() -> bytes:
    def stmt(code: int, k: int) -> bytes:
        return struct.pack("HBBI", code, 0, 0, k)

    def jump(code: int, k: int, jt: int, jf: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld_abs, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06
    allow, eperm = 0x7FFF0000, 0x00050000 | 1
    prog = [
        stmt(ld_abs, 4),  # 0: arch
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),  # 1
        stmt(ret, allow),  # 2
        stmt(ld_abs, 0),  # 3: nr
        jump(jeq, NR_KEYCTL, 7, 0),  # 4 -> 12
        jump(jeq, NR_ADD_KEY, 6, 0),  # 5 -> 12
        jump(jeq, NR_REQUEST_KEY, 5, 0),  # 6 -> 12
        jump(jeq, NR_UNSHARE, 1, 0),  # 7 -> 9
        stmt(ret, allow),  # 8
        stmt(ld_abs, 16),  # 9: args[0], low half
        jump(jset, CLONE_NEWUSER, 1, 0),  # 10 -> 12
        stmt(ret, allow),  # 11
        stmt(ret, eperm),  # 12
    ]
    return b"".join(prog)


def restrict() -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last_cap = int(f.read())
    for cap in range(last_cap + 1):
        if cap not in KEEP_CAPS:
            check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop cap {cap}")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    code = seccomp_filter()
    buf = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxQ", len(code) // 8, ctypes.addressof(buf))
    prog_buf = ctypes.create_string_buffer(prog, len(prog))
    check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog_buf, 0, 0), "seccomp")
    mask = sum(1 << c for c in KEEP_CAPS)
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0), 8)
    data = ctypes.create_string_buffer(struct.pack("IIIIII", mask, mask, 0, 0, 0, 0), 24)
    check(libc.syscall(NR_CAPSET, header, data), "capset")


def init(argv: list[str]) -> int:
    """pid 1 of the new pid namespace: set up the mounts, start the program, wait."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("/proc/sys", "/proc/sys", None, MS_BIND | MS_REC)
    mount(None, "/proc/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    mount(None, "/sys", None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    check(libc.sethostname(HOSTNAME, len(HOSTNAME)), "sethostname")
    check(libc.syscall(NR_KEYCTL, 1, None), "join a new session keyring")
    pid = os.fork()
    if pid == 0:
        try:
            restrict()
            os.execv(argv[0], argv)
        except OSError as e:
            print(f"restricted.py: {e}", file=sys.stderr)
        os._exit(127)
    status = 0
    while True:
        try:
            done, st = os.wait()
        except ChildProcessError:
            break
        if done == pid:
            status = os.waitstatus_to_exitcode(st)
    return status


def main() -> int:
    argv = sys.argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC
    check(libc.unshare(flags | CLONE_NEWCGROUP), "unshare")
    pid = os.fork()
    if pid == 0:
        libc.prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
        try:
            code = init(argv)
        except OSError as e:
            print(f"restricted.py: {e}", file=sys.stderr)
            code = 126
        os._exit(code if code >= 0 else 128 - code)
    _, st = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(st)


if __name__ == "__main__":
    sys.exit(main())
