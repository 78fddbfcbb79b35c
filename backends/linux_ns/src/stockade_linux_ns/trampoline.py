"""The last exec into an instance goes through a sealed in-memory program (CVE-2019-5736).

Whatever process calls execve is, until the exec completes, what ``/proc/self/exe`` means.
If that process is this runtime, a ``#!/proc/self/exe`` script (or an ELF whose
PT_INTERP is ``/proc/self/exe``) makes the kernel run the host's Python binary inside the
instance; a process there can hold it through ``/proc/PID/exe`` and, without a user
namespace, write it once it stops. runc's fix is to run from a sealed memfd copy of
itself. Copying a Python interpreter per exec would cost milliseconds, so instead the
runtime execs a ~200-byte program from a sealed memfd, which execs the command. The
instance can then only ever reach that memfd, whose seals refuse every write.

The program (x86-64 and AArch64; the ``as`` source kept beside the bytes, so they can be
rebuilt and checked): ``argv[0]`` is ``0x7f``, the report fd + 1 (1: none) and a failure prefix;
``argv[1]`` the path; ``argv[2:]`` the command's argv. It marks the report fd
close-on-exec and calls execve; if that fails it writes the prefix and the errno in
decimal to the report fd and exits 127. Started any other way (e.g. as the interpreter
of ``#!/proc/self/exe``) it exits 127 at once.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import NoReturn

_SOURCE_X86_64 = """
    mov rbx, [rsp]              # argc
    lea r12, [rsp+16+rbx*8]     # envp
    cmp rbx, 2
    jb 9f
    mov r14, [rsp+8]            # argv[0]
    cmp byte ptr [r14], 0x7f
    jne 9f
    movzx r13d, byte ptr [r14+1]
    dec r13d
    js 1f
    mov edi, r13d               # fcntl(fd, F_SETFD, FD_CLOEXEC)
    mov esi, 2
    mov edx, 1
    mov eax, 72
    syscall
1:  mov rdi, [rsp+16]           # execve(argv[1], &argv[2], envp)
    lea rsi, [rsp+24]
    mov rdx, r12
    mov eax, 59
    syscall
    neg eax
    mov r15d, eax               # errno
    test r13d, r13d
    js 9f
    lea rsi, [r14+2]            # write(fd, prefix, strlen(prefix))
    xor edx, edx
2:  cmp byte ptr [rsi+rdx], 0
    je 3f
    inc edx
    jmp 2b
3:  mov edi, r13d
    mov eax, 1
    syscall
    sub rsp, 16                 # write(fd, decimal errno + "\\n")
    lea rsi, [rsp+15]
    mov byte ptr [rsi], 10
    mov eax, r15d
    mov ecx, 10
4:  xor edx, edx
    div ecx
    add dl, 48
    dec rsi
    mov [rsi], dl
    test eax, eax
    jnz 4b
    lea rdx, [rsp+16]
    sub rdx, rsi
    mov edi, r13d
    mov eax, 1
    syscall
9:  mov edi, 127                # exit_group(127)
    mov eax, 231
    syscall
"""

_CODE_X86_64 = bytes.fromhex(
    "488b1c244c8d64dc104883fb020f829b0000004c8b74240841803e7f0f858c000000450fb66e0141ffcd78"
    "144489efbe02000000ba01000000b8480000000f05488b7c2410488d7424184c89e2b83b0000000f05f7d8"
    "4189c74585ed7850498d760231d2803c16007404ffc2ebf64489efb8010000000f054883ec10488d74240f"
    "c6060a4489f8b90a00000031d2f7f180c23048ffce881685c075f0488d5424104829f24489efb801000000"
    "0f05bf7f000000b8e70000000f05"
)

_SOURCE_AARCH64 = """
    ldr x19, [sp]               // argc
    add x20, sp, x19, lsl #3
    add x20, x20, #16           // envp
    cmp x19, #2
    b.lo 9f
    ldr x21, [sp, #8]           // argv[0]
    ldrb w9, [x21]
    cmp w9, #0x7f
    b.ne 9f
    ldrb w22, [x21, #1]
    subs w22, w22, #1
    b.mi 1f
    mov w0, w22                 // fcntl(fd, F_SETFD, FD_CLOEXEC)
    mov x1, #2
    mov x2, #1
    mov x8, #25
    svc #0
1:  ldr x0, [sp, #16]           // execve(argv[1], &argv[2], envp)
    add x1, sp, #24
    mov x2, x20
    mov x8, #221
    svc #0
    neg w23, w0                 // errno
    tbnz w22, #31, 9f
    add x1, x21, #2             // write(fd, prefix, strlen(prefix))
    mov x2, #0
2:  ldrb w9, [x1, x2]
    cbz w9, 3f
    add x2, x2, #1
    b 2b
3:  mov w0, w22
    mov x8, #64
    svc #0
    sub sp, sp, #16             // write(fd, decimal errno + "\\n")
    add x1, sp, #15
    mov w9, #10
    strb w9, [x1]
    mov w10, #10
4:  udiv w11, w23, w10
    msub w12, w11, w10, w23
    add w12, w12, #48
    sub x1, x1, #1
    strb w12, [x1]
    mov w23, w11
    cbnz w23, 4b
    add x2, sp, #16
    sub x2, x2, x1
    mov w0, w22
    mov x8, #64
    svc #0
9:  mov x0, #127                // exit_group(127)
    mov x8, #94
    svc #0
"""

_CODE_AARCH64 = bytes.fromhex(
    "f30340f9f46f338b944200917f0a00f1c3050054f50740f9a90240393ffd017141050054b6064039d60600"
    "71c4000054e003162a410080d2220080d2280380d2010000d4e00b40f9e1630091e20314aaa81b80d20100"
    "00d4f703004b7603f837a10a0091020080d2296862386900003442040091fdffff17e003162a080880d201"
    "0000d4ff4300d1e13f009149018052290000394a018052eb0aca1a6cdd0a1b8cc10011210400d12c000039"
    "f7030b2a57ffff35e2430091420001cbe003162a080880d2010000d4e00f80d2c80b80d2010000d4"
)

# machine: (e_machine, code, page alignment), for the ELF header
_MACHINES = {"x86_64": (62, _CODE_X86_64, 0x1000), "aarch64": (183, _CODE_AARCH64, 0x10000)}
_BASE = 0x400000
_F_ADD_SEALS, _F_SEAL_SEAL, _F_SEAL_SHRINK, _F_SEAL_GROW, _F_SEAL_WRITE = 1033, 1, 2, 4, 8
_MFD_EXEC = 0x10  # kernels >= 6.3 with vm.memfd_noexec: ask for an executable memfd


def available() -> bool:
    return os.uname().machine in _MACHINES


def elf(arch: str | None = None) -> bytes:
    """A static ELF for ``arch`` (default: this machine's): the header, PT_LOAD (the whole
    file, r-x) and PT_GNU_STACK (rw-)."""
    machine, code, align = _MACHINES[arch or os.uname().machine]
    ehsize, phsize, phnum = 64, 56, 2
    entry = _BASE + ehsize + phsize * phnum
    size = ehsize + phsize * phnum + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1
    fields = (2, machine, 1, entry, ehsize, 0, 0, ehsize, phsize, phnum, 0, 0, 0)  # ET_EXEC
    header = ident + struct.pack("<HHIQQQIHHHHHH", *fields)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, align)
    stack = struct.pack("<IIQQQQQQ", 0x6474E551, 6, 0, 0, 0, 0, 0, 16)
    return header + load + stack + code


def sealed_fd() -> int:
    """A close-on-exec memfd holding the program, sealed against every change."""
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        fd = os.memfd_create("stockade-exec", flags | _MFD_EXEC)
    except OSError as e:
        # Before 6.3 there is no such flag. Where vm.memfd_noexec = 2 forbids executable
        # memfds, fail closed (EACCES) rather than exec from the runtime's own binary.
        if e.errno != errno.EINVAL:
            raise OSError(e.errno, f"cannot make the sealed exec program: {e.strerror}") from e
        fd = os.memfd_create("stockade-exec", flags)
    try:
        os.write(fd, elf())
        import fcntl

        fcntl.fcntl(fd, _F_ADD_SEALS, _F_SEAL_SEAL | _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_WRITE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def execve(
    fd: int, path: str, args: list[str], env: dict[str, str], *, report_fd: int, prefix: str
) -> NoReturn:
    """Exec ``path`` through the program in ``fd`` (from :func:`sealed_fd`).

    On failure the program writes ``prefix`` and the errno to ``report_fd`` (-1: nowhere);
    ``report_fd`` must be below 255 and is closed by the successful exec.
    """
    if 0 <= report_fd <= 2:  # the program closes it on success: report to a copy
        report_fd = os.dup(report_fd)
    if report_fd >= 0:
        os.set_inheritable(report_fd, True)
    head = b"\x7f" + bytes([report_fd + 1 if 0 <= report_fd < 255 else 1]) + prefix.encode(errors="replace")
    os.execve(fd, [head, path.encode(), *(a.encode() for a in args)], env)
