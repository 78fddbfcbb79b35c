"""FreeBSD's errno numbers and one translator per operation into StockadeErrors.

FreeBSD numbers errors differently from Linux past 34 (EAGAIN is 35, not 11; EDQUOT
69, not 122), so a native number is read through FreeBSD's table (sys/sys/errno.h),
never through the running platform's ``errno`` module. The resulting StockadeError
carries the *running* platform's number for the same name, like every other
stockade error, and the kernel's own text (jail's and nmount's "errmsg") in its message.
"""

from __future__ import annotations

import errno as _host_errno

from stockade.errors import (
    AlreadyExists,
    IsolationError,
    NotFound,
    QuotaError,
    StockadeError,
    Unavailable,
)

FREEBSD_ERRNO: dict[int, str] = {
    1: "EPERM",
    2: "ENOENT",
    3: "ESRCH",
    4: "EINTR",
    5: "EIO",
    6: "ENXIO",
    7: "E2BIG",
    8: "ENOEXEC",
    9: "EBADF",
    10: "ECHILD",
    11: "EDEADLK",
    12: "ENOMEM",
    13: "EACCES",
    14: "EFAULT",
    15: "ENOTBLK",
    16: "EBUSY",
    17: "EEXIST",
    18: "EXDEV",
    19: "ENODEV",
    20: "ENOTDIR",
    21: "EISDIR",
    22: "EINVAL",
    23: "ENFILE",
    24: "EMFILE",
    25: "ENOTTY",
    26: "ETXTBSY",
    27: "EFBIG",
    28: "ENOSPC",
    29: "ESPIPE",
    30: "EROFS",
    31: "EMLINK",
    32: "EPIPE",
    33: "EDOM",
    34: "ERANGE",
    35: "EAGAIN",
    36: "EINPROGRESS",
    37: "EALREADY",
    38: "ENOTSOCK",
    39: "EDESTADDRREQ",
    40: "EMSGSIZE",
    41: "EPROTOTYPE",
    42: "ENOPROTOOPT",
    43: "EPROTONOSUPPORT",
    44: "ESOCKTNOSUPPORT",
    45: "EOPNOTSUPP",
    46: "EPFNOSUPPORT",
    47: "EAFNOSUPPORT",
    48: "EADDRINUSE",
    49: "EADDRNOTAVAIL",
    50: "ENETDOWN",
    51: "ENETUNREACH",
    52: "ENETRESET",
    53: "ECONNABORTED",
    54: "ECONNRESET",
    55: "ENOBUFS",
    56: "EISCONN",
    57: "ENOTCONN",
    58: "ESHUTDOWN",
    59: "ETOOMANYREFS",
    60: "ETIMEDOUT",
    61: "ECONNREFUSED",
    62: "ELOOP",
    63: "ENAMETOOLONG",
    64: "EHOSTDOWN",
    65: "EHOSTUNREACH",
    66: "ENOTEMPTY",
    67: "EPROCLIM",
    68: "EUSERS",
    69: "EDQUOT",
    70: "ESTALE",
    71: "EREMOTE",
    72: "EBADRPC",
    73: "ERPCMISMATCH",
    74: "EPROGUNAVAIL",
    75: "EPROGMISMATCH",
    76: "EPROCUNAVAIL",
    77: "ENOLCK",
    78: "ENOSYS",
    79: "EFTYPE",
    80: "EAUTH",
    81: "ENEEDAUTH",
    82: "EIDRM",
    83: "ENOMSG",
    84: "EOVERFLOW",
    85: "ECANCELED",
    86: "EILSEQ",
    87: "ENOATTR",
    88: "EDOOFUS",
    89: "EBADMSG",
    90: "EMULTIHOP",
    91: "ENOLINK",
    92: "EPROTO",
    93: "ENOTCAPABLE",
    94: "ECAPMODE",
    95: "ENOTRECOVERABLE",
    96: "EOWNERDEAD",
    97: "EINTEGRITY",
}
FREEBSD_NUMBER: dict[str, int] = {v: k for k, v in FREEBSD_ERRNO.items()}
FREEBSD_NUMBER["ENOTSUP"] = FREEBSD_NUMBER["EOPNOTSUPP"]
FREEBSD_NUMBER["EWOULDBLOCK"] = FREEBSD_NUMBER["EAGAIN"]

# FreeBSD-only names, and where the running platform lacks them, the nearest it has.
_NEAREST = {
    "EPROCLIM": "EAGAIN",
    "EFTYPE": "EINVAL",
    "EAUTH": "EACCES",
    "ENEEDAUTH": "EACCES",
    "ENOATTR": "ENODATA",
    "EDOOFUS": "EINVAL",
    "ENOTCAPABLE": "EPERM",
    "ECAPMODE": "EPERM",
    "EINTEGRITY": "EIO",
    "EBADRPC": "EIO",
    "ERPCMISMATCH": "EIO",
    "EPROGUNAVAIL": "EIO",
    "EPROGMISMATCH": "EIO",
    "EPROCUNAVAIL": "EIO",
}


def name_of(native: int) -> str:
    """FreeBSD errno number -> symbolic name ('E?123' for numbers FreeBSD does not define)."""
    return FREEBSD_ERRNO.get(native, f"E?{native}")


def local_errno(native: int) -> int:
    """The running platform's number for the error FreeBSD calls ``native``."""
    name = name_of(native)
    for candidate in (name, _NEAREST.get(name, ""), "EIO"):
        value = getattr(_host_errno, candidate, None) if candidate else None
        if isinstance(value, int):
            return value
    return _host_errno.EIO


def _describe(native: int, errmsg: str) -> str:
    """'<kernel text> (EADDRINUSE)' or just the name when the kernel wrote nothing."""
    name = name_of(native)
    return f"{errmsg} ({name})" if errmsg else name


def _err(cls: type[StockadeError], native: int, message: str) -> StockadeError:
    return cls(message, errno=local_errno(native))


def jail_set_error(native: int, errmsg: str, jail: str, create: bool) -> StockadeError:
    what = "create" if create else "update"
    why = _describe(native, errmsg)
    name = name_of(native)
    if name == "EEXIST":
        return _err(
            AlreadyExists, native, f"jail {jail!r} already exists: {why}; remove it or choose another name"
        )
    if name == "ENOENT" and not create:
        return _err(NotFound, native, f"jail {jail!r} not found: {why}")
    if name == "EPERM":
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; run as root on "
            "the host, and relax nothing the parent jail lacks",
        )
    if name == "EINVAL" and "unknown parameter" in errmsg:
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; this FreeBSD "
            "release lacks the parameter (allow.mount.<fs> needs the fs module loaded: "
            "kldload it)",
        )
    if name == "EADDRINUSE":
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; another jail "
            "holds that address: choose another network.ipv4",
        )
    if name in ("ENOTDIR", "ENOENT"):
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; the root path must be an existing directory",
        )
    if name == "ENAMETOOLONG":
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; a name, host name or path is too long",
        )
    if name == "EAGAIN":
        return _err(
            IsolationError,
            native,
            f"cannot {what} jail {jail!r}: {why}; the jail limit is reached (children.max of the parent)",
        )
    return _err(IsolationError, native, f"cannot {what} jail {jail!r}: {why}")


def jail_get_error(native: int, errmsg: str, jail: str) -> StockadeError:
    if name_of(native) == "ENOENT":
        return _err(NotFound, native, f"jail {jail!r} not found: {_describe(native, errmsg)}")
    return _err(IsolationError, native, f"cannot look up jail {jail!r}: {_describe(native, errmsg)}")


def jail_attach_error(native: int, jid: int) -> StockadeError:
    name = name_of(native)
    if name == "EINVAL":
        return _err(NotFound, native, f"jail {jid} no longer exists (EINVAL); recreate the instance")
    if name == "EPERM":
        return _err(IsolationError, native, f"cannot enter jail {jid} (EPERM): run as root")
    return _err(IsolationError, native, f"cannot enter jail {jid} ({name})")


def jail_remove_error(native: int, jid: int) -> StockadeError:
    name = name_of(native)
    if name == "EINVAL":
        return _err(NotFound, native, f"jail {jid} does not exist (EINVAL)")
    return _err(IsolationError, native, f"cannot remove jail {jid} ({name}): run as root on the host")


def setloginclass_error(native: int, login_class: str) -> StockadeError:
    name = name_of(native)
    hint = {
        "EPERM": "run as root",
        "ENAMETOOLONG": "a login class name has at most 32 bytes (MAXLOGNAME)",
    }.get(name, "")
    return _err(
        IsolationError,
        native,
        f"cannot set login class {login_class!r} ({name})" + (f": {hint}" if hint else ""),
    )


def nmount_error(native: int, errmsg: str, fstype: str, fspath: str) -> StockadeError:
    name = name_of(native)
    why = _describe(native, errmsg)
    hint = {
        "ENOENT": "the mount point or source does not exist, or the file system is unknown "
        f"(kldload {fstype})",
        "EBUSY": "something is already mounted there",
        "EPERM": "run as root on the host",
        "ENOTDIR": "the mount point must be a directory",
    }.get(name, "")
    return _err(
        IsolationError, native, f"cannot mount {fstype} on {fspath!r}: {why}" + (f"; {hint}" if hint else "")
    )


def unmount_error(native: int, fspath: str) -> StockadeError:
    name = name_of(native)
    if name == "EBUSY":
        return _err(
            IsolationError,
            native,
            f"cannot unmount {fspath!r} (EBUSY): a process still uses it; stop the instance first",
        )
    return _err(IsolationError, native, f"cannot unmount {fspath!r} ({name})")


RACCT_HINT = (
    "RACCT/RCTL is disabled: set kern.racct.enable=1 in /boot/loader.conf and reboot "
    "(the kernel needs options RACCT and RCTL, as GENERIC has)"
)


def rctl_error(native: int, op: str, rule: str) -> StockadeError:
    name = name_of(native)
    if name == "ENOSYS":
        return _err(Unavailable, native, f"rctl {op} {rule!r} failed: {RACCT_HINT}")
    if name == "EOPNOTSUPP":
        return _err(
            QuotaError,
            native,
            f"rctl {op} {rule!r}: the action is not supported for this "
            "resource (EOPNOTSUPP); I/O takes throttle, not deny",
        )
    if name == "ESRCH":
        return _err(NotFound, native, f"rctl {op} {rule!r}: no such rule (ESRCH)")
    if name == "EPERM":
        return _err(
            QuotaError,
            native,
            f"rctl {op} {rule!r} not permitted (EPERM): run as root on the host, not inside a jail",
        )
    if name == "EINVAL":
        return _err(
            QuotaError,
            native,
            f"rctl {op} {rule!r}: the kernel rejected the rule (EINVAL); check subject, resource and amount",
        )
    return _err(QuotaError, native, f"rctl {op} {rule!r} failed ({name})")


def sysctl_error(native: int, name: str) -> StockadeError:
    if name_of(native) == "ENOENT":
        return _err(
            Unavailable, native, f"sysctl {name} does not exist (ENOENT): the kernel lacks the feature"
        )
    return _err(StockadeError, native, f"cannot read sysctl {name} ({name_of(native)})")
