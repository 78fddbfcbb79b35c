"""cffi declarations for the libc calls the backend makes, and the lazily opened library.

ABI mode (no compiler, no headers), pyzfs style. Building the ``FFI`` object loads
nothing, so tests on Linux use it to make real iovec buffers; ``libc()`` opens the C
library only on FreeBSD, where these symbols exist.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

from stockade.errors import Unavailable

CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
int jail_set(struct iovec *iov, unsigned int niov, int flags);
int jail_get(struct iovec *iov, unsigned int niov, int flags);
int jail_attach(int jid);
int jail_remove(int jid);
int nmount(struct iovec *iov, unsigned int niov, int flags);
int unmount(const char *dir, int flags);
int rctl_add_rule(const char *inbufp, size_t inbuflen, char *outbufp, size_t outbuflen);
int rctl_remove_rule(const char *inbufp, size_t inbuflen, char *outbufp, size_t outbuflen);
int rctl_get_racct(const char *inbufp, size_t inbuflen, char *outbufp, size_t outbuflen);
int rctl_get_rules(const char *inbufp, size_t inbuflen, char *outbufp, size_t outbuflen);
int setloginclass(const char *name);
int sysctlbyname(const char *name, void *oldp, size_t *oldlenp, const void *newp, size_t newlen);
"""

# sys/sys/jail.h (cross-checked in tests/freebsd/test_constants.py)
JAIL_CREATE = 0x01
JAIL_UPDATE = 0x02
JAIL_ATTACH = 0x04
JAIL_DYING = 0x08
JAIL_SYS_DISABLE = 0
JAIL_SYS_NEW = 1
JAIL_SYS_INHERIT = 2
JAIL_ERRMSGLEN = 1024  # lib/libjail/jail.h
MAXHOSTNAMELEN = 256  # sys/sys/param.h
MAXPATHLEN = 1024  # sys/sys/syslimits.h (PATH_MAX)
MAXLOGNAME = 33  # sys/sys/param.h: a login class name is at most 32 bytes
# sys/sys/mount.h (nmount's flags argument is an int)
MNT_RDONLY = 0x1
MNT_FORCE = 0x80000
# net/if.h: IFNAMSIZ counts the NUL
IFNAMSIZ = 16


def is_freebsd() -> bool:
    return sys.platform.startswith("freebsd")


def not_freebsd_reason() -> str:
    """Why the FreeBSD backends cannot run here (empty on FreeBSD)."""
    if is_freebsd():
        return ""
    host = {"linux": "Linux", "darwin": "macOS", "win32": "Windows"}.get(sys.platform, sys.platform)
    return f"not FreeBSD (this host runs {host})"


@cache
def ffi() -> Any:
    import cffi  # type: ignore[import-untyped]

    f = cffi.FFI()
    f.cdef(CDEF)
    return f


@cache
def libc() -> Any:
    """libc's jail/nmount/rctl symbols; FreeBSD only, opened on first use."""
    reason = not_freebsd_reason()
    if reason:
        raise Unavailable(f"FreeBSD system calls are unavailable: {reason}")
    return ffi().dlopen(None)
