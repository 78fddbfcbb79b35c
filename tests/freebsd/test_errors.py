"""Error translation with FreeBSD's errno numbers, and the kernel call path with a fake libc
(real cffi function pointers) that fails and writes the kernel's errmsg."""

from __future__ import annotations

import errno

import pytest
from stockade.errors import (
    AlreadyExists,
    IsolationError,
    NotFound,
    QuotaError,
    SpecError,
    Unavailable,
)
from stockade_freebsd_jail import errnos
from stockade_freebsd_jail._ffi import JAIL_CREATE
from stockade_freebsd_jail.kernel import Kernel

from .conftest import Failure, FakeLib


def test_freebsd_errno_table() -> None:
    t = errnos.FREEBSD_NUMBER
    assert (t["EAGAIN"], t["EDQUOT"], t["ENOTSUP"], t["EOPNOTSUPP"], t["ENOSYS"]) == (35, 69, 45, 45, 78)
    assert (t["EADDRINUSE"], t["ENAMETOOLONG"], t["ESRCH"], t["EINTEGRITY"]) == (48, 63, 3, 97)
    assert errnos.name_of(35) == "EAGAIN" and errnos.name_of(11) == "EDEADLK"
    # the error carries the running platform's number for the same name
    assert errnos.local_errno(69) == errno.EDQUOT
    assert errnos.local_errno(35) == errno.EAGAIN
    assert errnos.local_errno(97) == errno.EIO  # EINTEGRITY: no Linux name, nearest
    assert errnos.name_of(1234) == "E?1234" and errnos.local_errno(1234) == errno.EIO


@pytest.mark.parametrize(
    ("native", "cls", "needle"),
    [
        (17, AlreadyExists, "already exists"),
        (1, IsolationError, "run as root"),
        (48, IsolationError, "another jail holds that address"),
        (20, IsolationError, "existing directory"),
        (63, IsolationError, "too long"),
        (35, IsolationError, "jail limit"),
    ],
)
def test_jail_set_translation(native: int, cls: type, needle: str) -> None:
    err = errnos.jail_set_error(native, "kernel text", "stockade-t1-web", create=True)
    assert type(err) is cls
    assert needle in str(err) and "kernel text" in str(err) and errnos.name_of(native) in str(err)
    assert err.errno == errnos.local_errno(native)


def test_other_translators() -> None:
    assert isinstance(errnos.jail_attach_error(22, 7), NotFound)
    assert isinstance(errnos.jail_remove_error(22, 7), NotFound)
    assert isinstance(errnos.jail_get_error(2, "", "x"), NotFound)
    racct = errnos.rctl_error(78, "add rule", "jail:x:maxproc:deny=1")
    assert isinstance(racct, Unavailable) and "kern.racct.enable=1" in str(racct)
    assert racct.errno == errno.ENOSYS
    notsup = errnos.rctl_error(45, "add rule", "jail:x:readbps:deny=1")
    assert isinstance(notsup, QuotaError) and notsup.errno == errno.EOPNOTSUPP
    assert isinstance(errnos.rctl_error(3, "remove rule", "jail:x:"), NotFound)
    m = errnos.nmount_error(2, "", "nullfs", "/r/data")
    assert "kldload nullfs" in str(m) and m.errno == errno.ENOENT
    assert "EBUSY" in str(errnos.unmount_error(16, "/r/dev"))
    assert isinstance(errnos.sysctl_error(2, "kern.racct.enable"), Unavailable)


def test_jail_set_success_sends_the_iovec(fake_lib: FakeLib) -> None:
    k = Kernel(fake_lib)
    assert k.jail_set([("name", "j"), ("path", "/r"), ("persist", True)], JAIL_CREATE, "j") == 7
    name, (wire, flags) = fake_lib.calls[0]
    assert name == "jail_set" and flags == JAIL_CREATE
    assert wire[:3] == [(b"name\0", b"j\0"), (b"path\0", b"/r\0"), (b"persist\0", None)]
    assert wire[3] == (b"errmsg\0", bytes(1024))


def test_jail_set_error_carries_errmsg(fake_lib: FakeLib) -> None:
    fake_lib.fail["jail_set"] = Failure(22, "unknown parameter: allow.mount.tmpfs")
    with pytest.raises(IsolationError) as info:
        Kernel(fake_lib).jail_set([("name", "j"), ("allow.mount.tmpfs", True)], JAIL_CREATE, "j")
    msg = str(info.value)
    assert "unknown parameter: allow.mount.tmpfs (EINVAL)" in msg and "kldload" in msg
    assert info.value.errno == errno.EINVAL


def test_jail_set_eexist_and_freebsd_only_numbers(fake_lib: FakeLib) -> None:
    fake_lib.fail["jail_set"] = Failure(17, "jail 7 already exists")
    with pytest.raises(AlreadyExists, match="jail 7 already exists"):
        Kernel(fake_lib).jail_set([("name", "j")], JAIL_CREATE, "j")
    fake_lib.fail["jail_set"] = Failure(35, "")  # FreeBSD EAGAIN (Linux 35 is EDEADLK)
    with pytest.raises(IsolationError, match=r"EAGAIN.*jail limit") as info:
        Kernel(fake_lib).jail_set([("name", "j")], JAIL_CREATE, "j")
    assert info.value.errno == errno.EAGAIN


def test_find_and_remove(fake_lib: FakeLib) -> None:
    k = Kernel(fake_lib)
    assert k.find("j") == 7
    fake_lib.fail["jail_get"] = Failure(2, 'jail "j" not found')
    assert k.find("j") is None
    fake_lib.fail["jail_remove"] = Failure(22)
    assert k.jail_remove(7) is False
    fake_lib.fail["jail_remove"] = Failure(1)
    with pytest.raises(IsolationError, match="EPERM"):
        k.jail_remove(7)


def test_nmount_error(fake_lib: FakeLib) -> None:
    fake_lib.fail["nmount"] = Failure(16, "")
    with pytest.raises(IsolationError, match="already mounted") as info:
        Kernel(fake_lib).nmount([("fstype", "devfs"), ("fspath", "/r/dev")], 0)
    assert "devfs on '/r/dev'" in str(info.value)


def test_rctl_calls(fake_lib: FakeLib) -> None:
    k = Kernel(fake_lib)
    k.rctl_add("jail:j:maxproc:deny=10")
    assert fake_lib.calls[-1] == ("rctl_add_rule", (b"jail:j:maxproc:deny=10\0", 0))
    fake_lib.fail["rctl_remove_rule"] = Failure(3)
    assert k.rctl_remove("jail:j:") is False
    fake_lib.fail["rctl_add_rule"] = Failure(78)
    with pytest.raises(Unavailable, match=r"kern\.racct\.enable=1"):
        k.rctl_add("jail:j:maxproc:deny=10")


def test_spec_error_shape_for_preflight() -> None:
    err = SpecError([("jail stockade-t1-web", "name: '1' is numeric")])
    assert "jail stockade-t1-web: name" in str(err)
