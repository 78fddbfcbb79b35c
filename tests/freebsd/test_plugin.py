"""Registration through the entry point, honest declarations, and nothing FreeBSD-specific
loaded on Linux."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from stockade.errors import Unavailable
from stockade.features import Feature
from stockade.interfaces import BackendConfig, IsolationBackend, QuotaBackend
from stockade.plugins import PluginManager
from stockade.spec import InstanceSpec
from stockade_freebsd_jail import _ffi
from stockade_freebsd_jail.isolation import FreeBsdJailIsolation
from stockade_freebsd_jail.quota import RctlQuota

from .conftest import make_spec

CONFIG = BackendConfig(
    root=Path("/tmp/stockade-test-fbsd"), run_dir=Path("/tmp/stockade-test-fbsd/run"), host_tag="t1"
)
ON_LINUX = sys.platform.startswith("linux")


def test_entry_point_registers_both_backends() -> None:
    pm = PluginManager()
    iso = pm.registry.get("isolation", "freebsd_jail")
    quota = pm.registry.get("quota", "rctl")
    assert iso.factory is FreeBsdJailIsolation and quota.factory is RctlQuota
    assert iso.plugin == "freebsd_jail"
    assert isinstance(pm.make("isolation", "freebsd_jail", CONFIG), IsolationBackend)
    assert isinstance(pm.make("quota", "rctl", CONFIG), QuotaBackend)


def test_declarations() -> None:
    assert FreeBsdJailIsolation.features == {
        Feature.FS_ISOLATION,
        Feature.NETWORK_ISOLATION,
        Feature.COLD_MIGRATION,
        Feature.DELEGATED_DATASET,
    }
    assert Feature.CHECKPOINT not in FreeBsdJailIsolation.features
    assert Feature.LIVE_MIGRATION not in FreeBsdJailIsolation.features
    assert FreeBsdJailIsolation.semantics.migration == "cold"
    assert RctlQuota.features == {
        Feature.MEMORY_LIMIT,
        Feature.CPU_QUOTA,
        Feature.PIDS_LIMIT,
        Feature.IO_RATE_LIMIT,
    }
    assert RctlQuota.semantics.io_limit_on == "dataset"


def test_delegated_dataset_needs_mount_allowed() -> None:
    iso = FreeBsdJailIsolation(CONFIG)
    spec = {"name": "d", "network": {"mode": "none"}, "delegate_dataset": True}
    assert any("delegate_dataset: needs allow" in p for p in iso.check(InstanceSpec.from_dict(spec)))
    assert not [p for p in iso.check(InstanceSpec.from_dict({**spec, "allow": ["mount"]})) if "delegate" in p]


@pytest.mark.skipif(not ON_LINUX, reason="checks the answer on Linux")
def test_probe_on_linux_says_why() -> None:
    for backend in (FreeBsdJailIsolation(CONFIG), RctlQuota(CONFIG)):
        probe = backend.probe()
        assert not probe.ok and probe.reason == "not FreeBSD (this host runs Linux)"
        assert backend.gc({}) == []
    with pytest.raises(Unavailable, match="not FreeBSD"):
        _ffi.libc()


def test_check_lists_what_a_jail_cannot_do() -> None:
    iso = FreeBsdJailIsolation(CONFIG)
    assert iso.check(make_spec()) == []
    lines = iso.check(make_spec(allow=["kmod", "mount"], user_namespace=True, network={"mode": "bridge"}))
    assert len(lines) == 3
    assert RctlQuota(CONFIG).check(make_spec(resources={"cpu_weight": 10})) != []


def test_options_shape_the_jail() -> None:
    iso = FreeBsdJailIsolation(
        BackendConfig(
            root=CONFIG.root,
            run_dir=CONFIG.run_dir,
            host_tag="t1",
            options={
                "network_stack": "ip",
                "stack": "ip",
                "securelevel": 3,
                "interface": "lo1",
                "mount_fs": ["nullfs"],
                "login_class": "jail",
            },
        )
    )
    assert iso.opts.securelevel == 3 and iso.opts.stack == "ip" and iso.opts.mount_fs == ("nullfs",)
    assert iso.opts.login_class == "jail" and iso._ops().login_class == "jail"
    plan = iso.network_plan(make_spec(network={"mode": "bridge", "ipv4": "192.0.2.9"}), "web")
    assert plan.kind == "ip" and plan.host_setup[0].argv[1] == "lo1"


def test_import_loads_nothing_platform_specific() -> None:
    code = (
        "import sys, stockade_freebsd_jail.plugin, stockade_freebsd_jail.isolation, "
        "stockade_freebsd_jail.quota; "
        "print(sorted(m for m in ('cffi', '_cffi_backend') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registration_and_probe_stay_light() -> None:
    """Backends load with the plugin on every command: registering them, constructing them
    and probe() import none of the builders, cffi, or the helper (the import-time budget)."""
    code = """
import sys
from pathlib import Path
from stockade.interfaces import BackendConfig
from stockade.plugins import PluginManager
pm = PluginManager()
config = BackendConfig(root=Path("/tmp/x"), run_dir=Path("/tmp/x/run"), host_tag="t")
for kind, name in (("isolation", "freebsd_jail"), ("quota", "rctl")):
    pm.make(kind, name, config).probe()
mine = {m.rpartition(".")[2] for m in sys.modules if m.startswith("stockade_freebsd_jail.")}
print(sorted(mine), "cffi" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("]")[0] + "]" == str(
        sorted(["plugin", "isolation", "quota", "_ffi", "options", "restrictions"])
    )
    assert out.stdout.strip().endswith("False")


def test_bad_options_are_refused_by_check() -> None:
    opts = {"login_class": "x" * 33, "stack": "vlan"}
    iso = FreeBsdJailIsolation(
        BackendConfig(root=CONFIG.root, run_dir=CONFIG.run_dir, host_tag="t1", options=opts)
    )
    lines = iso.check(make_spec())
    assert any("login_class" in x and "MAXLOGNAME" in x for x in lines)
    assert any("option stack: 'vlan'" in x for x in lines)
    ok = FreeBsdJailIsolation(
        BackendConfig(
            root=CONFIG.root, run_dir=CONFIG.run_dir, host_tag="t1", options={"login_class": "x" * 32}
        )
    )
    assert ok.check(make_spec()) == []
