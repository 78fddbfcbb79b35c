"""The isolation backend's create/start/destroy sequence against a fake libc: the order of
kernel calls is what FreeBSD would see (the processes themselves run unjailed on Linux)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from stockade.interfaces import BackendConfig, InstanceContext, RootFS, Stdio
from stockade.spec import InstanceSpec
from stockade_freebsd_jail._ffi import JAIL_CREATE, MNT_RDONLY
from stockade_freebsd_jail.isolation import FreeBsdJailIsolation
from stockade_freebsd_jail.kernel import Kernel

from .conftest import FakeLib, make_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the helper drops privileges)")


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="stockade-test-fbsd-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _context(spec: InstanceSpec, config: BackendConfig, root: Path) -> InstanceContext:
    """The instance "web" with its state and run directories in the test's config root."""
    return InstanceContext(
        id="web",
        name="web",
        spec=spec,
        config=config,
        state_dir=config.root / "s",
        run_dir=config.run_dir,
        rootfs=RootFS(str(root)),
    )


def test_create_start_destroy_sequence(tmp: Path, fake_lib: FakeLib) -> None:
    root, run, out = tmp / "root", tmp / "run", tmp / "out"
    root.mkdir()
    config = BackendConfig(root=tmp, run_dir=run, host_tag="t1")
    iso = FreeBsdJailIsolation(config)
    kernel = iso._kernel = Kernel(fake_lib)
    attached = tmp / "attached"
    real_attach = kernel.jail_attach

    def attach(jid: int) -> None:  # runs in the forked helper: leave a trace on disk
        real_attach(jid)
        attached.write_text(f"{jid} {os.getpid()}")

    real_class = kernel.setloginclass

    def setloginclass(name: str) -> None:  # after attach, in the same helper process
        real_class(name)
        with attached.open("a") as f:
            f.write(f" class={name} {os.getpid()}")

    kernel.jail_attach = attach  # type: ignore[method-assign]
    kernel.setloginclass = setloginclass  # type: ignore[method-assign]
    spec = make_spec(
        process={"args": ["/bin/sh", "-c", f"echo ran > {out}"], "env": {"PATH": "/bin:/usr/bin"}},
        mounts=[{"target": "/data", "source": str(tmp), "readonly": True}],
        network={"mode": "none"},
        resources={"memory": "64M"},
    )
    ctx = _context(spec, config, root)
    joined = tmp / "joined"
    spawned = iso.create(ctx, Stdio(), lambda pid: joined.write_text(str(pid)))
    assert (root / "dev").is_dir() and (root / "data").is_dir()
    names = [c[0] for c in fake_lib.calls]
    assert names == ["nmount", "nmount", "jail_set"]  # jail_attach happens in the helper
    (devfs, _), (_, ro) = fake_lib.calls[0][1], fake_lib.calls[1][1]
    assert devfs[0] == (b"fstype\0", b"devfs\0") and ro == MNT_RDONLY
    jail_wire, flags = fake_lib.calls[2][1]
    assert flags == JAIL_CREATE and jail_wire[0] == (b"name\0", b"stockade-t1-web\0")
    assert jail_wire[1] == (b"path\0", str(root).encode() + b"\0")
    # the helper joined the quota groups, then attached to jid 7, before waiting
    assert joined.read_text() == str(spawned.pid)
    assert attached.read_text() == f"7 {spawned.pid} class=default {spawned.pid}"
    assert os.getpid() != spawned.pid  # the caller itself never attached
    assert not out.exists()  # waiting for start
    iso.start(ctx)
    _, status = os.waitpid(spawned.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and out.read_text() == "ran\n"
    assert ctx.bag("isolation")["jid"] == 7

    fake_lib.calls.clear()
    iso.destroy(ctx)
    calls = [(n, a) for n, a in fake_lib.calls if n != "jail_get"]
    assert calls == [
        ("jail_remove", 7),
        ("unmount", (f"{root}/data", 0)),  # reverse of the mount order
        ("unmount", (f"{root}/dev", 0)),
        ("rctl_remove_rule", (b"jail:stockade-t1-web:\0", 0)),
    ]
    fake_lib.calls.clear()
    iso.destroy(ctx)  # idempotent: nothing mounted any more
    assert [n for n, _ in fake_lib.calls if n in ("unmount", "nmount")] == []


def test_zfs_dataset_delegation_order(tmp: Path, fake_lib: FakeLib, monkeypatch: pytest.MonkeyPatch) -> None:
    """jailed=on before jail_set, zfs jail after it (before the first process), zfs unjail
    before jail_remove; the jail gets allow.mount.zfs and enforce_statfs=1."""
    from stockade.errors import UnsupportedFeature
    from stockade_freebsd_jail import hostcmd

    root, run = tmp / "root", tmp / "run"
    root.mkdir()
    config = BackendConfig(root=tmp, run_dir=run, host_tag="t1")
    iso = FreeBsdJailIsolation(config)
    iso._kernel = Kernel(fake_lib)

    def run_steps(steps: object, **kw: object) -> dict[str, str]:
        for step in steps:  # type: ignore[attr-defined]
            fake_lib.calls.append(("host", step.argv))
        return {}

    monkeypatch.setattr(hostcmd, "run_steps", run_steps)

    def context(allow: list[str]) -> InstanceContext:
        spec = make_spec(process={"args": ["/bin/true"]}, network={"mode": "none"}, allow=allow)
        ctx = _context(spec, config, root)
        ctx.bag("storage")["jail_dataset"] = "tank/stockade/web-data"
        return ctx

    with pytest.raises(UnsupportedFeature, match="needs allow = \\['mount'\\]"):
        iso.create(context([]), Stdio(), lambda pid: None)
    assert fake_lib.calls == []  # refused before anything was made

    ctx = context(["mount"])
    spawned = iso.create(ctx, Stdio(), lambda pid: None)
    order = [c[1] if c[0] == "host" else c[0] for c in fake_lib.calls]
    assert order == [
        "nmount",
        ("zfs", "set", "jailed=on", "tank/stockade/web-data"),
        "jail_set",
        ("zfs", "jail", "stockade-t1-web", "tank/stockade/web-data"),
    ]
    wire = dict(fake_lib.calls[2][1][0])
    assert b"allow.mount.zfs\0" in wire and wire[b"enforce_statfs\0"] == (1).to_bytes(4, "little")
    iso.start(ctx)
    os.waitpid(spawned.pid, 0)
    fake_lib.calls.clear()
    iso.destroy(ctx)
    order = [c[1] if c[0] == "host" else c[0] for c in fake_lib.calls if c[0] != "jail_get"]
    assert order == [
        ("zfs", "unjail", "stockade-t1-web", "tank/stockade/web-data"),
        "jail_remove",
        "unmount",
        "rctl_remove_rule",
    ]
