"""Finding a working CRIU and talking to it in RPC ("swrk") mode over a socketpair.

``criu swrk FD`` serves protobuf requests on an inherited SOCK_SEQPACKET socket: one
message per packet, notifications (``notify_scripts``) come back as requests of ours to
answer, so the caller can act at "setup-namespaces" or "post-dump" without action
scripts. Each request runs in a fresh criu child that exits after replying.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from stockade.errors import IsolationError, Unavailable

from . import kdat, pb

DEFAULT_PREFIX = Path("/opt/stockade-criu")
# 3.17 (Debian 12's) fails `criu check` on kernels >= 6.13 (the vDSO split, fixed in 4.1); on
# older kernels (the VM tier's 6.1) it works, with the RPC shims of ``legacy_options``.
MIN_VERSION = (4, 1)
MIN_VERSION_OLD_KERNEL = (3, 17)
VDSO_SPLIT_KERNEL = (6, 13)
# RPC fields (criu_opts) newer than the oldest CRIU accepted: the first version that reads them.
# An older criu ignores a field it does not know (protobuf), so they must not be sent blind.
# (An enum value it does not know fails the whole request, before criu even opens its log.)
RPC_LEAVE_STOPPED = (3, 19)
RPC_NETLOCK_SKIP = (3, 19)
RPC_SKIP_FILE_RWX_CHECK = (3, 18)
SETUP_HINT = "run scripts/setup-criu.sh (it builds CRIU 4.2.1 from Debian's source into /opt/stockade-criu)"

_checked: dict[str, tuple[bool, str]] = {}
_versions: dict[str, tuple[int, ...] | None] = {}


class CriuFailed(IsolationError):
    """CRIU refused or failed a request; the message ends with the log's last error."""


def candidates() -> list[str]:
    out: list[str] = []
    env = os.environ.get("STOCKADE_CRIU")
    if env:
        out.append(env)
    out.append(str(DEFAULT_PREFIX / "sbin" / "criu"))
    found = shutil.which("criu")
    if found:
        out.append(found)
    return out


def version_of(binary: str) -> tuple[int, ...] | None:
    """``criu --version`` as numbers (None: no version), cached per binary for this process."""
    if binary in _versions:
        return _versions[binary]
    try:
        text = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError:
        return None
    m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
    ver = tuple(int(g) for g in m.groups() if g is not None) if m else None
    _versions[binary] = ver
    return ver


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel (or of ``release``, e.g. "6.1.0-56-amd64")."""
    m = re.match(r"(\d+)\.(\d+)", release if release is not None else os.uname().release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def min_version(kernel: tuple[int, int] | None = None) -> tuple[int, int]:
    """The oldest CRIU that works on this kernel (or on ``kernel``)."""
    k = kernel if kernel is not None else kernel_version()
    return MIN_VERSION if k >= VDSO_SPLIT_KERNEL else MIN_VERSION_OLD_KERNEL


def legacy_options(opts: Mapping[str, Any], version: tuple[int, ...]) -> tuple[dict[str, Any], list[str]]:
    """``opts`` as a CRIU of ``version`` takes them: (RPC options, lines for an RPC config file).

    ``leave_stopped`` is an RPC field since 3.19; before, it goes in as ``leave-stopped`` in
    the RPC config file, and ``leave_running`` must then stay out (criu applies the RPC flags
    after that file, so leave_running would win). ``network_lock`` SKIP (3.19) becomes
    NFTABLES: the lock then costs a table in the instance's network namespace, and needs no
    iptables binaries. ``skip_file_rwx_check`` (3.18) has no older form: it is dropped, and
    the caller makes the modes match instead (see driver.restore).
    """
    out = dict(opts)
    conf: list[str] = []
    if version[:2] < RPC_LEAVE_STOPPED and out.pop("leave_stopped", 0):
        out.pop("leave_running", None)
        conf.append("leave-stopped")
    if version[:2] < RPC_NETLOCK_SKIP and out.get("network_lock") == pb.NETLOCK_SKIP:
        out["network_lock"] = pb.NETLOCK_NFTABLES
    if version[:2] < RPC_SKIP_FILE_RWX_CHECK:
        out.pop("skip_file_rwx_check", None)
    return out, conf


def _check(binary: str) -> tuple[bool, str]:
    """(works, why not): version and ``criu check``, cached per binary for this process."""
    if binary in _checked:
        return _checked[binary]
    if not os.access(binary, os.X_OK):
        res = (False, f"{binary} is not there")
    else:
        ver = version_of(binary)
        if ver is None:
            res = (False, f"{binary} --version says no version")
        elif ver[:2] < min_version():
            res = (
                False,
                f"{binary} is CRIU {'.'.join(map(str, ver))}; kernel "
                f"{'.'.join(map(str, kernel_version()))} needs >= "
                f"{'.'.join(map(str, min_version()))} (older ones fail on kernels >= 6.13)",
            )
        else:
            p = subprocess.run([binary, "check"], capture_output=True, text=True, timeout=60, check=False)
            if p.returncode == 0:
                res = (True, "")
                kdat.ensure(binary)
            else:
                lines = [ln.strip() for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
                errs = [ln for ln in lines if "rror" in ln] or lines
                res = (False, f"`{binary} check` fails: {errs[-1] if errs else 'exit ' + str(p.returncode)}")
    _checked[binary] = res
    return res


def find() -> str:
    """The first working CRIU binary, or Unavailable saying why each candidate is not."""
    reasons: list[str] = []
    for b in candidates():
        ok, why = _check(b)
        if ok:
            return b
        if why and os.path.exists(b):
            reasons.append(why)
    if not reasons:
        reasons.append("no criu binary found")
    raise Unavailable(f"checkpoint: no working CRIU ({'; '.join(reasons)}); {SETUP_HINT}")


def probe_reason() -> str:
    """Empty when a working CRIU exists, else the one-line reason."""
    try:
        find()
    except Unavailable as e:
        return str(e)
    return ""


NotifyFn = Callable[[str, int], None]


class Swrk:
    """One ``criu swrk`` child and its socket; use as a context manager."""

    def __init__(self, binary: str | None = None, pass_fds: Iterable[int] = ()) -> None:
        import socket

        self.binary = binary or find()
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            fds = (child.fileno(), *pass_fds)
            self.proc = subprocess.Popen(
                [self.binary, "swrk", str(child.fileno())],
                pass_fds=fds,
                close_fds=True,
                stdin=subprocess.DEVNULL,
                # setsid: a signal to our process group (^C) must not kill criu mid-restore
                start_new_session=True,
            )
        finally:
            child.close()

    def __enter__(self) -> Swrk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def call(
        self,
        req_type: int,
        opts: Mapping[str, Any] | None = None,
        notify: NotifyFn | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        req: dict[str, Any] = {"type": req_type, **extra}
        if opts is not None:
            req["opts"] = dict(opts)
        self.sock.send(pb.encode(pb.REQ, req))
        while True:
            data = self.sock.recv(1 << 20)
            if not data:
                raise CriuFailed(f"criu ({self.binary}) closed the RPC socket without answering")
            resp = pb.decode(pb.RESP, data)
            if resp.get("type") == pb.NOTIFY:
                ok = True
                note = resp.get("notify", {})
                try:
                    if notify is not None:
                        notify(note.get("script", ""), int(note.get("pid", 0)))
                except BaseException:
                    ok = False
                    self.sock.send(pb.encode(pb.REQ, {"type": pb.NOTIFY, "notify_success": False}))
                    raise
                finally:
                    if ok:
                        self.sock.send(pb.encode(pb.REQ, {"type": pb.NOTIFY, "notify_success": True}))
                continue
            return resp


EMPTY_LOG = "(criu logged nothing: it refused the request itself, e.g. an RPC value it does not know)"


def log_error(log: Path, limit: int = 3) -> str:
    """The last ``Error`` lines of a CRIU log (what to show the user), or its tail."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no criu log)"
    if not lines:
        return EMPTY_LOG
    errs = [ln for ln in lines if ("Error" in ln or "error" in ln.split(":", 1)[0]) and not _harmless(ln)]
    pick = errs[-limit:] if errs else lines[-limit:]
    return " | ".join(re.sub(r"^\(\s*[\d.]+\)\s*", "", ln).strip() for ln in pick)


def _harmless(line: str) -> bool:
    # Logged as an error, not fatal: without CAP_SYS_RESOURCE (our root has none) criu goes
    # on with the RLIMIT_NOFILE it has.
    return "RLIMIT_NOFILE" in line


def _first_error(log: Path) -> str:
    """The first error of a failed dump: the cause (the later ones say that it failed)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no criu log)"
    errs = [ln for ln in lines if "Error" in ln and not _harmless(ln)]
    return re.sub(r"^\(\s*[\d.]+\)\s*", "", errs[0]).strip() if errs else log_error(log)


def feature_check(binary: str | None = None) -> dict[str, bool]:
    """What this kernel + CRIU can do: mem_track (pre-copy), lazy_pages (post-copy)."""
    with Swrk(binary) as s:
        resp = s.call(pb.FEATURE_CHECK, features={"mem_track": 1, "lazy_pages": 1, "pidfd_store": 1})
    f = resp.get("features", {})
    return {k: bool(f.get(k, 0)) for k in ("mem_track", "lazy_pages", "pidfd_store")}


# criu's lazy page server tees pages through a pipe of PIPE_MAX_SIZE pages (page-pipe.h: 819
# on x86-64), which the kernel rounds up to 1024 pages: 4 MiB. Over fs.pipe-max-size that
# needs CAP_SYS_RESOURCE, and without it criu 4.1 fails every page request ("splice: Bad
# file descriptor": the failed F_SETPIPE_SZ is not checked).
LAZY_PIPE_BYTES = 4 << 20
CAP_SYS_RESOURCE = 24


def postcopy_problem() -> str:
    """Why criu's lazy page server would fail in this process ('' when it works)."""
    try:
        with open("/proc/self/status") as f:
            caps = next((int(ln.split()[1], 16) for ln in f if ln.startswith("CapEff:")), 0)
        with open("/proc/sys/fs/pipe-max-size") as f:
            max_size = int(f.read())
    except (OSError, ValueError):
        return ""
    if caps & (1 << CAP_SYS_RESOURCE) or max_size >= LAZY_PIPE_BYTES:
        return ""
    return (
        f"post-copy: criu's page server needs a {LAZY_PIPE_BYTES >> 20} MiB pipe, over "
        f"fs.pipe-max-size ({max_size}) without CAP_SYS_RESOURCE; run "
        f"`sysctl -w fs.pipe-max-size={LAZY_PIPE_BYTES}` or give stockade CAP_SYS_RESOURCE"
    )


# --- can this CRIU dump TCP sockets on this kernel? -------------------------------------------

# The probe's child: a listening socket, and for "established" a connected pair, on the
# loopback of a network namespace of its own (nothing ever leaves it); then it waits to be
# dumped (criu kills it: no leave_running).
_SOCKET_CHILD = """
import os, socket, sys
w, mode = int(sys.argv[1]), sys.argv[2]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
keep = [srv]
if mode == "established":
    cli = socket.create_connection(srv.getsockname())
    acc = srv.accept()[0]
    cli.sendall(b"x")
    keep += [cli, acc]
os.write(w, b"1")
os.close(w)
os.read(0, 1)
"""

# Linux 6.16 (7d8d93fdde50) refuses getsockopt(SO_PASSCRED=16/SO_PASSSEC=34) on inet sockets;
# CRIU < 4.2 reads both for every socket it dumps.
_SO_PASS_ERRORS = ("Can't get 1:16 opt", "Can't get 1:34 opt")
SOCKET_HINT = (
    "Linux >= 6.16 refuses SO_PASSCRED/SO_PASSSEC on TCP/UDP sockets and CRIU < 4.2 asks for "
    "them; use CRIU >= 4.2 or run scripts/setup-criu.sh (it builds 4.2.1)"
)

_socket_checked: dict[tuple[str, str], str] = {}


def socket_problem(kind: str = "established", binary: str | None = None) -> str:
    """Why this CRIU cannot dump a TCP socket here ('' when it can), measured.

    ``kind``: "listen" (a listening socket; needs no TCP repair) or "established" (a
    connection, dumped with ``tcp_established``: TCP repair mode, queues, options). A
    throwaway child holding such sockets in a network namespace of its own is dumped, and
    criu's own error is the answer. Cached per binary for this process (~0.1 s each).
    """
    if kind not in ("listen", "established"):
        raise ValueError(f"socket_problem: {kind!r} is not 'listen' or 'established'")
    binary = binary or find()
    if kind == "established":
        first = socket_problem("listen", binary)
        if first:
            return first
    key = (binary, kind)
    if key not in _socket_checked:
        _socket_checked[key] = _probe_socket_dump(binary, kind)
    return _socket_checked[key]


def _probe_socket_dump(binary: str, kind: str) -> str:
    import sys
    import tempfile

    from .. import spawn, syscalls

    images = Path(tempfile.mkdtemp(prefix="stockade-criu-probe-"))
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()  # the child's stdin: it waits on it until criu kills it
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        try:
            os.close(r)
            os.close(hold_w)
            os.dup2(hold_r, 0)
            syscalls.unshare(syscalls.CLONE_NEWNET)
            spawn.loopback_up()
            os.setsid()
            devnull = os.open("/dev/null", os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.set_inheritable(w, True)
            os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _SOCKET_CHILD, str(w), kind])
        finally:
            os._exit(127)
    os.close(w)
    os.close(hold_r)
    try:
        ready = os.read(r, 1) == b"1"
        if not ready:
            return f"TCP sockets: the probe could not make its {kind} sockets (not a CRIU problem)"
        netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        fd = os.open(images, os.O_RDONLY | os.O_DIRECTORY)
        try:
            opts: dict[str, Any] = {
                "images_dir_fd": fd,
                "pid": pid,
                "log_level": 2,
                "log_file": "dump.log",
                "shell_job": 1,
                "tcp_established": int(kind == "established"),
                "network_lock": pb.NETLOCK_SKIP,  # nothing moves: the peer is in the dump
                "external": [f"net[{netns}]:probe"],
            }
            opts, _ = legacy_options(opts, version_of(binary) or ())  # needs no config file
            with Swrk(binary, pass_fds=[fd]) as s:
                resp = s.call(pb.DUMP, opts)
        finally:
            os.close(fd)
        if resp.get("success"):
            return ""
        err = _first_error(images / "dump.log")
        what = "listening" if kind == "listen" else "connected"
        why = f"TCP sockets: {binary} cannot dump a {what} one on this kernel ({err})"
        if any(e in err for e in _SO_PASS_ERRORS):
            why += f"; {SOCKET_HINT}"
        return why
    finally:
        os.close(r)
        os.close(hold_w)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        shutil.rmtree(images, ignore_errors=True)
