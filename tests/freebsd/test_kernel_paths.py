"""The FreeBSD-only paths, run on Linux against the fake libc: probe() with the kernel's
sysctls (root, jailed, kern.racct.enable), rctl_get_racct's answer and its ERANGE retry,
the kernel's errmsg surfaced from nmount and jail_get, and the numeric constants."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from stockade.errors import IsolationError
from stockade.interfaces import BackendConfig, InstanceContext
from stockade.spec import InstanceSpec
from stockade_freebsd_jail import _ffi, isolation, quota
from stockade_freebsd_jail.iovec import build_iovec, read_iovec
from stockade_freebsd_jail.isolation import FreeBsdJailIsolation
from stockade_freebsd_jail.kernel import Kernel
from stockade_freebsd_jail.mounts import plan_mounts
from stockade_freebsd_jail.quota import RctlQuota

from .conftest import Failure, FakeLib, make_spec

CONFIG = BackendConfig(
    root=Path("/tmp/stockade-test-fbsd"), run_dir=Path("/tmp/stockade-test-fbsd/run"), host_tag="t1"
)


@pytest.fixture
def as_freebsd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the backends believe they run on FreeBSD (their kernel is the fake libc)."""
    monkeypatch.setattr(isolation, "not_freebsd_reason", lambda: "")
    monkeypatch.setattr(quota, "not_freebsd_reason", lambda: "")


def _iso(lib: FakeLib) -> FreeBsdJailIsolation:
    iso = FreeBsdJailIsolation(CONFIG)
    iso._kernel = Kernel(lib)
    return iso


def _quota(lib: FakeLib) -> RctlQuota:
    q = RctlQuota(CONFIG)
    q._kernel = Kernel(lib)
    return q


def _ctx(spec: InstanceSpec) -> InstanceContext:
    """An instance context for the quota backend, which never touches its directories."""
    return InstanceContext(
        id="web",
        name="web",
        spec=spec,
        config=CONFIG,
        state_dir=Path("/nonexistent"),
        run_dir=Path("/nonexistent"),
    )


@pytest.mark.usefixtures("as_freebsd")
def test_isolation_probe_on_freebsd(fake_lib: FakeLib, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    fake_lib.sysctls["security.jail.jailed"] = 0
    assert _iso(fake_lib).probe().ok
    assert ("sysctlbyname", "security.jail.jailed") in fake_lib.calls
    fake_lib.sysctls["security.jail.jailed"] = 1
    assert _iso(fake_lib).probe().reason == "this host is itself a jail (create instances from the host)"
    del fake_lib.sysctls["security.jail.jailed"]
    assert "sysctl security.jail.jailed does not exist (ENOENT)" in _iso(fake_lib).probe().reason
    monkeypatch.setattr(os, "geteuid", lambda: 1001)
    assert _iso(fake_lib).probe().reason == "jail_set(2) needs root on the host"


@pytest.mark.usefixtures("as_freebsd")
def test_rctl_probe_checks_kern_racct_enable(fake_lib: FakeLib) -> None:
    fake_lib.sysctls["kern.racct.enable"] = 1
    assert _quota(fake_lib).probe().ok
    assert fake_lib.calls == [("sysctlbyname", "kern.racct.enable")]
    fake_lib.sysctls["kern.racct.enable"] = 0
    reason = _quota(fake_lib).probe().reason
    assert reason == "kern.racct.enable is 0: set kern.racct.enable=1 in /boot/loader.conf and reboot"
    del fake_lib.sysctls["kern.racct.enable"]
    reason = _quota(fake_lib).probe().reason
    assert reason.startswith("the kernel has no RACCT") and "options RACCT and RCTL" in reason


def test_racct_answer_and_erange_retry(fake_lib: FakeLib) -> None:
    fake_lib.racct = "cputime=3,memoryuse=52428800,maxproc=4," + ",".join(f"r{i}=0" for i in range(600))
    assert len(fake_lib.racct) > 4096  # does not fit the first buffer
    text = Kernel(fake_lib).rctl_racct("jail:stockade-t1-web")
    assert text == fake_lib.racct
    asked = [a for n, a in fake_lib.calls if n == "rctl_get_racct"]
    assert asked == [(b"jail:stockade-t1-web\0", 4096), (b"jail:stockade-t1-web\0", 16384)]


def test_quota_stats_through_the_kernel(fake_lib: FakeLib) -> None:
    fake_lib.racct = "cputime=2,memoryuse=1048576,maxproc=3,pcpu=7"
    spec = make_spec(resources={"memory": "64M", "pids": 10})
    ctx = _ctx(spec)
    stats = _quota(fake_lib).stats(ctx)
    assert (stats.memory_used, stats.cpu_usage_ns, stats.pids_current) == (1048576, 2_000_000_000, 3)
    assert fake_lib.calls == [("rctl_get_racct", (b"jail:stockade-t1-web\0", 4096))]
    fake_lib.fail["rctl_get_racct"] = Failure(3)  # ESRCH: no accounting for that jail yet
    assert _quota(fake_lib).stats(ctx).memory_used is None


def test_quota_create_and_update_send_each_rule(fake_lib: FakeLib) -> None:
    spec = make_spec(resources={"memory": "64M", "io": {"write_bps": "1M"}})
    ctx = _ctx(spec)
    q = _quota(fake_lib)
    q.create(ctx)
    assert fake_lib.calls == [
        ("rctl_remove_rule", (b"jail:stockade-t1-web:\0", 0)),
        ("rctl_add_rule", (b"jail:stockade-t1-web:memoryuse:deny=67108864\0", 0)),
        ("rctl_add_rule", (b"jail:stockade-t1-web:writebps:throttle=1048576\0", 0)),
    ]
    fake_lib.calls.clear()
    q.update(ctx, make_spec(resources={"pids": 5}).resources)
    assert fake_lib.calls == [
        ("rctl_remove_rule", (b"jail:stockade-t1-web:\0", 0)),
        ("rctl_add_rule", (b"jail:stockade-t1-web:maxproc:deny=5\0", 0)),
    ]


def test_devfs_nmount_wire_and_errmsg(fake_lib: FakeLib) -> None:
    devfs = plan_mounts(make_spec(), "/r/web", "/run/web", 4).steps[0]
    assert read_iovec(build_iovec(devfs.params())) == [
        (b"fstype\0", b"devfs\0"),
        (b"fspath\0", b"/r/web/dev\0"),
        (b"from\0", b"devfs\0"),
        (b"ruleset\0", b"4\0"),  # a string: devfs scans it with "%d", as mount -o ruleset=4 sends it
        (b"errmsg\0", bytes(1024)),
    ]
    fake_lib.fail["nmount"] = Failure(2, "devfs: ruleset 99 does not exist")
    with pytest.raises(IsolationError) as info:
        Kernel(fake_lib).nmount(devfs.params(), devfs.flags)
    msg = str(info.value)
    assert "cannot mount devfs on '/r/web/dev': devfs: ruleset 99 does not exist (ENOENT)" in msg
    assert info.value.errno == errno.ENOENT
    wire, flags = fake_lib.calls[-1][1]
    assert flags == 0 and wire[-1][0] == b"errmsg\0"


def test_jail_get_errmsg_surfaces(fake_lib: FakeLib) -> None:
    fake_lib.fail["jail_get"] = Failure(1, "jail_get: operation not permitted here")
    with pytest.raises(IsolationError, match=r"operation not permitted here \(EPERM\)"):
        Kernel(fake_lib).find("stockade-t1-web")


def test_constants_match_freebsd_headers() -> None:
    # sys/sys/jail.h, lib/libjail/jail.h, sys/sys/param.h, sys/sys/syslimits.h,
    # sys/sys/mount.h, net/if.h (checked against freebsd-src)
    assert (_ffi.JAIL_CREATE, _ffi.JAIL_UPDATE, _ffi.JAIL_ATTACH, _ffi.JAIL_DYING) == (1, 2, 4, 8)
    assert (_ffi.JAIL_SYS_DISABLE, _ffi.JAIL_SYS_NEW, _ffi.JAIL_SYS_INHERIT) == (0, 1, 2)
    assert (_ffi.JAIL_ERRMSGLEN, _ffi.MAXHOSTNAMELEN, _ffi.MAXPATHLEN, _ffi.MAXLOGNAME) == (
        1024,
        256,
        1024,
        33,
    )
    assert (_ffi.MNT_RDONLY, _ffi.MNT_FORCE, _ffi.IFNAMSIZ) == (0x1, 0x80000, 16)
    f = _ffi.ffi()
    # LP64 (amd64, arm64): the sizes the kernel copies in
    assert (f.sizeof("struct iovec"), f.sizeof("size_t"), f.sizeof("int")) == (16, 8, 4)
