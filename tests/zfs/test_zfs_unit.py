"""What the ZFS backend decides without a pool: error translation per platform, the cdef
being current, lazy loading, refusals. Runs everywhere."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from stockade.errors import (
    AlreadyExists,
    NotFound,
    NotSupported,
    QuotaExceeded,
    StateConflict,
    StorageError,
    UnsupportedFeature,
)
from stockade.features import Feature
from stockade.interfaces import BackendConfig, InstanceContext, StorageBase
from stockade.spec import InstanceSpec
from stockade_zfs import cdefgen, translate
from stockade_zfs.storage import IO_REFUSAL, ZfsStorage, decode_image, encode_image
from stockade_zfs.translate import FREEBSD, LINUX, ErrnoTable

TABLES = [pytest.param(LINUX, id="linux"), pytest.param(FREEBSD, id="freebsd")]


def backend(options: dict[str, str] | None = None) -> ZfsStorage:
    return ZfsStorage(
        BackendConfig(
            Path("/tmp/stockade-test-zfs-x"),
            Path("/tmp/stockade-test-zfs-x/run"),
            "t",
            options if options is not None else {"dataset": "tank/stk"},
        )
    )


# --- declarations ---------------------------------------------------------------------------


def test_declares_what_it_implements() -> None:
    assert issubclass(ZfsStorage, StorageBase)
    assert ZfsStorage.name == "zfs" and ZfsStorage.kind == "storage"
    assert ZfsStorage.features == {
        Feature.COPY_ON_WRITE,
        Feature.SNAPSHOT,
        Feature.DISK_QUOTA,
        Feature.DELEGATED_DATASET,
    }
    s = ZfsStorage.semantics
    assert (s.quota_scope, s.io_limit_on, s.restore) == ("referenced", "none", "latest_only")


def test_registered_through_the_entry_point() -> None:
    from stockade.plugins import PluginManager

    reg = PluginManager().registry.get("storage", "zfs")
    assert reg.factory is ZfsStorage and reg.plugin == "zfs"


def test_import_loads_no_library() -> None:
    code = (
        "import sys, stockade_zfs.plugin, stockade_zfs.storage, stockade_zfs.ops;"
        "print('_cffi_backend' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_io_limits_refused_up_front() -> None:
    spec = InstanceSpec.from_dict({"name": "a", "resources": {"io": {"write_bps": "1M"}}})
    b = backend()
    assert b.check(spec) == [IO_REFUSAL]
    assert "no block device" in IO_REFUSAL
    assert b.check(InstanceSpec.from_dict({"name": "a", "resources": {"disk": "64M"}})) == []
    ctx = InstanceContext(
        id="x1",
        name="a",
        spec=spec,
        config=b.config,
        state_dir=Path("/nonexistent"),
        run_dir=Path("/nonexistent"),
    )
    with pytest.raises(UnsupportedFeature, match="no block device"):
        b.provision(ctx)


@pytest.mark.parametrize(
    ("options", "parent"),
    [
        ({"dataset": "tank/stockade"}, "tank/stockade"),
        ({"dataset": "/tank/a/b/"}, "tank/a/b"),
        ({"pool": "tank", "parent": "stockade"}, "tank/stockade"),
        ({"pool": "tank"}, "tank"),
        ({}, None),
        ({"dataset": "tank/bad name"}, None),
    ],
)
def test_parent_from_options(options: dict[str, str], parent: str | None) -> None:
    b = backend(options)
    assert b.parent == parent
    if parent:
        assert b.instances_ds == f"{parent}/t/instances"


def test_probe_says_why_in_one_line() -> None:
    reason = backend().probe().reason
    if os.path.exists("/dev/zfs"):
        pytest.skip("this host has ZFS; the VM tier checks probe() there")
    assert reason and "\n" not in reason
    assert "/dev/zfs" in reason or "lib" in reason


@pytest.mark.parametrize("image", ["default", "a/b", "x_y/z_", "_s", "a:1"])
def test_image_names_round_trip(image: str) -> None:
    enc = encode_image(image)
    assert "/" not in enc and decode_image(enc) == image


# --- the generated cdef ---------------------------------------------------------------------


@pytest.mark.skipif(
    not (cdefgen.DEFAULT_INCLUDE / "libzfs_core.h").exists(),
    reason="OpenZFS headers not installed (apt-get install libzfslinux-dev, contrib)",
)
def test_cdef_is_current_with_the_installed_headers() -> None:
    assert cdefgen.generate() == cdefgen.OUTPUT.read_text(), (
        "stockade_zfs/_cdef.py is stale: run python -m stockade_zfs.cdefgen"
    )


def test_cdef_declares_only_what_cffi_accepts() -> None:
    cffi = pytest.importorskip("cffi")
    from stockade_zfs._cdef import CDEF

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    assert ffi.sizeof("enum lzc_send_flags") == 4
    assert "lzc_rollback_to" in CDEF and "struct nvlist {" not in CDEF


def test_enum_values_are_computed() -> None:
    stmts = cdefgen._statements(
        '#ifdef __cplusplus\nextern "C" {\n#endif\n'
        "typedef enum { A = (1 << 3), B, C = A | 1 } t_t; /* x; */\n"
    )
    text = " ".join(cdefgen._enum(stmts, "t_t").split())
    assert text == "typedef enum { A = 8, B = 9, C = 9, } t_t;"


# --- error translation, per platform --------------------------------------------------------


@pytest.mark.parametrize("t", TABLES)
def test_rollback_translation(t: ErrnoTable) -> None:
    e = translate.rollback(t["EEXIST"], "p/i", "p/i@s1", ["s2", "s3"], t)
    assert isinstance(e, StateConflict) and e.errno == t["EEXIST"]
    assert "s2, s3" in str(e) and "latest" in str(e)
    assert isinstance(translate.rollback(t["ENOENT"], "p/i", "p/i@x", (), t), NotFound)


@pytest.mark.parametrize("t", TABLES)
@pytest.mark.parametrize(
    ("sym", "cls"),
    [
        ("ENOENT", NotFound),
        ("EEXIST", AlreadyExists),
        ("EBUSY", StateConflict),
        ("EDQUOT", QuotaExceeded),
        ("ENOSPC", StorageError),
        ("ENOTSUP", NotSupported),
        ("ECKSUM", StorageError),
        ("EIO", StorageError),
    ],
)
def test_generic_meanings(t: ErrnoTable, sym: str, cls: type[Exception]) -> None:
    e = (
        translate.clone(t[sym], "p/c", "p/i@base", t)
        if sym != "ENOENT"
        else translate.snapshot(t[sym], "p/i@s", t)
    )
    assert type(e) is cls
    assert e.errno == t[sym]  # type: ignore[attr-defined]
    assert "\n" not in str(e)


def test_platform_errnos_differ() -> None:
    # ECKSUM is EBADE (52) on Linux and EINTEGRITY (97) on FreeBSD; EDQUOT 122 vs 69.
    assert (LINUX["ECKSUM"], FREEBSD["ECKSUM"]) == (52, 97)
    assert (LINUX["EDQUOT"], FREEBSD["EDQUOT"]) == (122, 69)
    assert "checksum" in str(translate.receive(97, "p/i@s", False, FREEBSD))
    assert "checksum" not in str(translate.receive(97, "p/i@s", False, LINUX))
    # FreeBSD has no ECHRNG or ETIME: they alias ENXIO and ETIMEDOUT, whose names win
    assert FREEBSD.name(FREEBSD["ECHRNG"]) == "ENXIO"
    assert FREEBSD.name(FREEBSD["ETIME"]) == "ETIMEDOUT"
    assert LINUX.name(44) == "ECHRNG" and LINUX.name(62) == "ETIME"
    assert isinstance(translate.create(FREEBSD["EDQUOT"], "p/x", FREEBSD), QuotaExceeded)
    assert not isinstance(translate.create(69, "p/x", LINUX), QuotaExceeded)


def test_host_table_matches_this_platform() -> None:
    t = translate.table()
    for sym in ("ENOENT", "EEXIST", "EBUSY", "EDQUOT", "ENOSPC", "EXDEV", "ENOTSUP"):
        assert t[sym] == getattr(errno, sym), sym


@pytest.mark.parametrize(
    ("code", "text"),
    [
        ("ENODEV", "not the latest"),
        ("ETXTBSY", "modified"),
        ("EINVAL", "invalid"),
    ],
)
def test_receive_context(code: str, text: str) -> None:
    assert text in str(translate.receive(LINUX[code], "p/i@s2", True, LINUX))


def test_libzfs_codes() -> None:
    e = translate.libzfs(
        "set refquota=1M on", "p/i", "EZFS_PROPSPACE", "size is less than current used", FREEBSD
    )
    assert isinstance(e, QuotaExceeded) and e.errno == 69
    e = translate.libzfs("unmount", "p/i", "EZFS_UMOUNTFAILED", "umount failed", LINUX)
    assert isinstance(e, StateConflict) and e.errno == errno.EBUSY
    assert type(translate.libzfs("mount", "p/i", "EZFS_WHATEVER", "", LINUX)) is StorageError


@pytest.mark.parametrize(
    "foreign",
    [
        "tank/other",
        "tank/stk-x/t/instances/a",
        "tank/stk/t/images/default",
        "tank/stk/t/instances/a/b",
        "tank",
    ],
)
def test_records_naming_datasets_outside_the_parent_are_refused(foreign: str) -> None:
    """Refused before any library call (on this host the library would fail to init with
    LibraryMissing, not this error), whatever the operation."""
    b = backend()
    ctx = InstanceContext(
        id="x1",
        name="a",
        spec=InstanceSpec.from_dict({"name": "a"}),
        config=b.config,
        state_dir=Path("/nonexistent"),
        run_dir=Path("/nonexistent"),
        data={"storage": {"dataset": foreign}},
    )
    for call in (b.release, b.unmount, b.mount, b.usage, b.list_snapshots, lambda c: b.set_quota(c, None)):
        with pytest.raises(StorageError, match="refusing to touch"):
            call(ctx)
    if not foreign.startswith(f"{b.base}/"):  # images and roots below the host's own are its to destroy
        with pytest.raises(StorageError, match="refusing to destroy"):
            b._destroy_tree(foreign)
    assert b._ours("tank/stk/t/instances/a1-receiving", "x") == "tank/stk/t/instances/a1-receiving"
