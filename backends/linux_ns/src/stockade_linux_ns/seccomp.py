"""The default seccomp filter: allow everything except the calls that reach the host kernel.

Built with libseccomp (through ctypes), exported as classic BPF once per profile and
cached, so a process entering an instance only does one ``prctl``. libseccomp cannot
say "EPERM unless the argument is one of these values" in one rule, so ``personality``
is checked by a second, hand-written filter (the stricter result of the two wins).
The table below is the documentation: docs/security.md mirrors it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import struct
from functools import cache

from stockade.features import Restriction

from . import syscalls

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_ARCH_X86 = 3 | 0x40000000
SCMP_ARCH_X32 = 62 | 0x40000000
SCMP_CMP_MASKED_EQ = 7
SCMP_FLTATR_CTL_NNP = 3
_NR_SCMP_ERROR = -1

CLONE_NEWUSER = syscalls.CLONE_NEWUSER

# Refused with EPERM unless the spec relaxes the restriction named on the left.
RELAXABLE_CALLS: dict[Restriction, tuple[str, ...]] = {
    Restriction.MOUNT: (
        "mount",
        "umount",
        "umount2",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "mount_setattr",
        "pivot_root",
    ),
    Restriction.KMOD: ("init_module", "finit_module", "delete_module"),
    Restriction.KERNEL_MODIFY: (
        "iopl",
        "ioperm",
        "kexec_load",
        "kexec_file_load",
        "bpf",
        "perf_event_open",
        "reboot",
        "swapon",
        "swapoff",
    ),
    Restriction.PTRACE: ("ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"),
    Restriction.KEYRING: ("keyctl", "add_key", "request_key"),
    Restriction.SYS_TIME: (
        "settimeofday",
        "stime",
        "clock_settime",
        "clock_settime64",
        "clock_adjtime",
        "clock_adjtime64",
        "adjtimex",
    ),
}
# Refused with EPERM always.
ALWAYS_DENIED: tuple[str, ...] = (
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "syslog",
    "acct",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "quotactl",
    "quotactl_fd",
    "uselib",
    "ustat",
    "sysfs",
    "vm86",
    "vm86old",
    "nfsservctl",
)
# Creating user namespaces (Restriction.NEW_USERNS): clone/unshare with CLONE_NEWUSER get
# EPERM; clone3 gets ENOSYS because its flags live in memory a filter cannot read, and
# libc then falls back to clone, whose flags it can.
USERNS_CALLS = ("clone", "unshare")
PERSONALITY_ALLOWED = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


@cache
def libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_void_p,
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def libseccomp_problem() -> str | None:
    """Why libseccomp cannot be used here, or None."""
    try:
        libseccomp()
    except OSError as e:
        return f"libseccomp is not loadable ({e}): install libseccomp2"
    return None


def denied_calls(allow: frozenset[Restriction]) -> list[str]:
    out = list(ALWAYS_DENIED)
    for restriction, calls in RELAXABLE_CALLS.items():
        if restriction not in allow:
            out.extend(calls)
    return out


def _relevant(allow: frozenset[Restriction]) -> frozenset[Restriction]:
    return frozenset(r for r in allow if r in RELAXABLE_CALLS or r is Restriction.NEW_USERNS)


_cache: dict[frozenset[Restriction], bytes] = {}


def program_for(allow: frozenset[Restriction]) -> bytes:
    """The BPF programs (main filter, then the personality filter) for these relaxations.

    Each program is prefixed by its length in instructions (u32), so the child can load
    them one by one without parsing anything else.
    """
    key = _relevant(allow)
    prog = _cache.get(key)
    if prog is None:
        main = compile_filter(key)
        pers = personality_filter()
        prog = struct.pack("=I", len(main) // 8) + main + struct.pack("=I", len(pers) // 8) + pers
        _cache[key] = prog
    return prog


def profile_hash(allow: frozenset[Restriction]) -> str:
    return hashlib.sha256(program_for(allow)).hexdigest()[:16]


def load(prog: bytes) -> None:
    """Install what ``program_for`` returned. NO_NEW_PRIVS must already be set."""
    off = 0
    while off < len(prog):
        (n,) = struct.unpack_from("=I", prog, off)
        off += 4
        syscalls.seccomp_load_bpf(prog[off : off + 8 * n])
        off += 8 * n


def compile_filter(allow: frozenset[Restriction]) -> bytes:
    lib = libseccomp()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        # We set NO_NEW_PRIVS ourselves; the exported program must not depend on it.
        lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0)
        for arch in (SCMP_ARCH_X86, SCMP_ARCH_X32):
            rc = lib.seccomp_arch_add(ctx, arch)
            if rc not in (0, -errno.EEXIST):
                raise OSError(-rc, f"seccomp_arch_add({arch:#x}): {os.strerror(-rc)}")
        eperm = SCMP_ACT_ERRNO | errno.EPERM
        for name in denied_calls(allow):
            _rule(lib, ctx, eperm, name, None)
        if Restriction.NEW_USERNS not in allow:
            cmp = (_ArgCmp * 1)(_ArgCmp(0, SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
            for name in USERNS_CALLS:
                _rule(lib, ctx, eperm, name, cmp)
            _rule(lib, ctx, SCMP_ACT_ERRNO | errno.ENOSYS, "clone3", None)
        fd = os.memfd_create("stockade-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc != 0:
                raise OSError(-rc, f"seccomp_export_bpf: {os.strerror(-rc)}")
            size = os.fstat(fd).st_size
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, cmp: ctypes.Array[_ArgCmp] | None) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr == _NR_SCMP_ERROR:
        return  # a call this libseccomp does not know: no arch we filter has it
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmp) if cmp else 0, cmp)
    if rc != 0:
        raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")


# --- the personality filter (classic BPF by hand) ----------------------------------------

_AUDIT_ARCH_X86_64 = 62 | 0x80000000 | 0x40000000
_AUDIT_ARCH_I386 = 3 | 0x40000000
_X32_BIT = 0x40000000
_PERSONALITY_NR = {_AUDIT_ARCH_X86_64: (135, 135 | _X32_BIT), _AUDIT_ARCH_I386: (136,)}
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000


@cache
def personality_filter() -> bytes:
    """EPERM for personality() with anything but the standard values, on x86-64/x32/i386."""
    # Symbolic program: ("ld", offset) | ("jeq", k, true_label, false_label) | ("ret", k)
    # | ("label", name); a label of None means the next instruction.
    prog: list[tuple[object, ...]] = [("ld", 4)]
    arches = list(_PERSONALITY_NR)
    for i, arch in enumerate(arches):
        prog.append(("jeq", arch, f"arch{i}", None if i + 1 < len(arches) else "allow"))
    for i, arch in enumerate(arches):
        prog.append(("label", f"arch{i}"))
        prog.append(("ld", 0))
        nrs = _PERSONALITY_NR[arch]
        for j, nr in enumerate(nrs):
            prog.append(("jeq", nr, "check", None if j + 1 < len(nrs) else "allow"))
    prog.append(("label", "check"))
    prog.append(("ld", 16))  # args[0], low 32 bits (personality takes an unsigned int)
    for value in PERSONALITY_ALLOWED:
        prog.append(("jeq", value, "allow", None))
    prog.append(("ret", _SECCOMP_RET_ERRNO | errno.EPERM))
    prog.append(("label", "allow"))
    prog.append(("ret", _SECCOMP_RET_ALLOW))

    labels: dict[str, int] = {}
    pc = 0
    for ins in prog:
        if ins[0] == "label":
            labels[str(ins[1])] = pc
        else:
            pc += 1
    out = bytearray()
    pc = 0
    for ins in prog:
        if ins[0] == "label":
            continue

        def rel(label: object, at: int = pc) -> int:
            return 0 if label is None else labels[str(label)] - at - 1

        if ins[0] == "ld":
            out += struct.pack("=HBBI", _LD_W_ABS, 0, 0, int(str(ins[1])))
        elif ins[0] == "jeq":
            out += struct.pack("=HBBI", _JEQ_K, rel(ins[2]), rel(ins[3]), int(str(ins[1])))
        else:
            out += struct.pack("=HBBI", _RET_K, 0, 0, int(str(ins[1])))
        pc += 1
    return bytes(out)
