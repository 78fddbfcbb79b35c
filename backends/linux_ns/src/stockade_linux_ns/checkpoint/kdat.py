"""CRIU's kernel-feature cache (``/run/criu.kdat``) on hosts whose /run is not a tmpfs.

Every CRIU process probes the kernel first (~30 ms here: uffd, mount and socket features,
...) unless it finds ``criu.kdat``, its cache of that probe, in its RUNDIR (/run, as
scripts/setup-criu.sh builds it). CRIU *writes* the cache only to a tmpfs, so that a reboot
(maybe into another kernel) drops it; on a host whose /run is a disk file system it never
has one and pays the probe in every dump, restore and lazy-pages daemon, i.e. twice inside
a live migration's downtime.

There, stockade makes the cache the way CRIU would: it runs ``criu check`` once in a
private mount namespace with a tmpfs on /run, copies the file CRIU wrote to the real /run,
and stamps it with the boot id and the binary. It is made again after a reboot or with
another CRIU build, and removed first, so a stale one is never read. (CRIU only loads the
file: it checks its own build stamp in it, not the file system.) Hosts where /run is a
tmpfs (systemd's default) are left to CRIU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess

RUNDIR = "/run"
CACHE = os.path.join(RUNDIR, "criu.kdat")
STAMP = os.path.join(RUNDIR, "criu.kdat.stockade")
_done: set[str] = set()


def fs_type(path: str) -> str:
    """The file system type of the mount ``path`` is on (the longest mount point above it)."""
    best, kind = "", ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            mp = parts[1].replace("\\040", " ")
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                best, kind = mp, parts[2]
    return kind


def _stamp(binary: str) -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    st = os.stat(binary)
    return f"{boot} {binary} {st.st_ino} {st.st_mtime_ns}\n"


def ensure(binary: str) -> None:
    """Make sure ``binary`` finds a valid cache (once per process; never raises: without a
    cache CRIU works as before, only slower)."""
    if binary in _done:
        return
    _done.add(binary)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        if os.geteuid() != 0 or fs_type(RUNDIR) == "tmpfs":
            return
        stamp = _stamp(binary)
        with contextlib.suppress(FileNotFoundError), open(STAMP) as f:
            if f.read() == stamp and os.path.exists(CACHE):
                return
        for p in (STAMP, CACHE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        _make(binary, stamp)


def _make(binary: str, stamp: str) -> None:
    script = 'mount -t tmpfs -o mode=700 stockade-kdat /run && "$0" check >/dev/null 2>&1; cat /run/criu.kdat'
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, binary],
        capture_output=True,
        timeout=60,
        check=False,
    )
    if p.returncode != 0 or not p.stdout:
        return
    tmp = f"{CACHE}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, p.stdout)
        finally:
            os.close(fd)
        os.rename(tmp, CACHE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    with open(STAMP, "w") as f:
        f.write(stamp)
