"""The helper's call sequence, run in-process with every call recorded: a fake jail_attach
(a real cffi function pointer, through ``Kernel``) first, then chdir("/"), the login class,
setgroups -> setgid -> setuid, umask, cwd and exec - and nothing after a failed step.
No fork and no root needed: this is the order FreeBSD would see."""

from __future__ import annotations

from typing import Any

import pytest
from stockade.errors import NotFound
from stockade.spec import Process
from stockade_freebsd_jail.helper import POSIX, Ops, enter_and_prepare, exec_process, groups_for
from stockade_freebsd_jail.kernel import Kernel

from .conftest import Failure, FakeLib

PROC = Process(
    args=("/usr/sbin/nginx", "-g", "daemon off;"),
    env={"PATH": "/bin"},
    cwd="/srv",
    uid=80,
    gid=80,
    additional_gids=(5, 80, 6),
    umask=0o027,
)


class Exec(Exception):
    pass


def recording_ops(calls: list[tuple[str, Any]], lib: FakeLib | None = None) -> Ops:
    def rec(name: str) -> Any:
        return lambda *a: calls.append((name, a[0] if len(a) == 1 else a))

    def execvpe(*a: Any) -> None:
        calls.append(("execvpe", a))
        raise Exec  # a real exec does not return

    return Ops(
        chdir=rec("chdir"),
        setgroups=rec("setgroups"),
        setgid=rec("setgid"),
        setuid=rec("setuid"),
        umask=rec("umask"),
        execvpe=execvpe,
        setloginclass=Kernel(lib).setloginclass if lib is not None else rec("setloginclass"),
        login_class="daemon",
    )


def test_order_attach_then_chdir_loginclass_groups_gid_uid_umask_cwd_exec(fake_lib: FakeLib) -> None:
    calls = fake_lib.calls  # the kernel calls and the POSIX calls in one timeline
    kernel = Kernel(fake_lib)
    stage = [""]
    enter_and_prepare(lambda: kernel.jail_attach(7), PROC, recording_ops(calls, fake_lib), stage)
    with pytest.raises(Exec):
        exec_process(PROC, recording_ops(calls), stage)
    assert calls == [
        ("jail_attach", 7),
        ("chdir", "/"),
        ("setloginclass", "daemon"),
        ("setgroups", [80, 5, 6]),  # the primary gid first, no repeat
        ("setgid", 80),
        ("setuid", 80),
        ("umask", 0o027),
        ("chdir", "/srv"),
        ("execvpe", ("/usr/sbin/nginx", ["/usr/sbin/nginx", "-g", "daemon off;"], {"PATH": "/bin"})),
    ]
    assert stage == ["exec"]


def test_failed_attach_stops_everything(fake_lib: FakeLib) -> None:
    fake_lib.fail["jail_attach"] = Failure(22)  # the jail is gone
    kernel = Kernel(fake_lib)
    calls: list[tuple[str, Any]] = []
    stage = [""]
    with pytest.raises(NotFound, match="jail 7 no longer exists"):
        enter_and_prepare(lambda: kernel.jail_attach(7), PROC, recording_ops(calls), stage)
    assert calls == [] and stage == ["attach"]  # never setuid/exec outside the jail


def test_failed_login_class_stops_before_privileges_drop(fake_lib: FakeLib) -> None:
    fake_lib.fail["setloginclass"] = Failure(63)  # FreeBSD ENAMETOOLONG
    calls: list[tuple[str, Any]] = []
    stage = [""]
    with pytest.raises(Exception, match=r"login class 'daemon' \(ENAMETOOLONG\)"):
        enter_and_prepare(lambda: None, PROC, recording_ops(calls, fake_lib), stage)
    assert calls == [("chdir", "/")] and stage == ["login class"]


def test_posix_ops_have_no_login_class_call() -> None:
    # Linux has no setloginclass: the default ops skip it (the real run is test_helper.py)
    calls: list[tuple[str, Any]] = []
    ops = recording_ops(calls)
    plain = Ops(**{**ops.__dict__, "setloginclass": None})
    enter_and_prepare(lambda: None, PROC, plain, [""])
    assert [c[0] for c in calls] == ["chdir", "setgroups", "setgid", "setuid", "umask", "chdir"]
    assert POSIX.setloginclass is None
    assert groups_for(Process(gid=0)) == [0]
