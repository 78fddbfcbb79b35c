"""The probe under a restricted environment made by the test (restricted.py: namespaces,
read-only /proc/sys and /sys, Docker's capabilities minus NET_RAW and MKNOD, no_new_privs,
a seccomp filter for keyctl and new user namespaces): the checks must say "forbidden".

The full in-instance run is the isolation backend's conformance test.
"""

from __future__ import annotations

import os
import platform

import pytest
from stockade.testing.probe import CHECKS, HostBeacons

from .probe_helpers import RunProbe, diff_state, host_state, needs_root

pytestmark = [
    needs_root,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="restricted.py's seccomp is x86_64"),
]

# Allowed by restricted.py on purpose: a same-uid child can be traced without privilege.
CONTROLS = {"ptrace.own_child"}
# Without the feature in the kernel the answer is ENOSYS whatever the restriction.
KERNEL_CONFIG = {
    "kmod.finit_module",
    "kmod.delete_module",
    "kernel_modify.iopl",
    "kernel_modify.ioperm",
    "kernel_modify.kexec_file_load",
    "raw_sockets.inet6_raw_icmpv6",
}
KEPT_CAPS = 0xA00405FB  # restricted.KEEP_CAPS


def test_restricted_run_reports_forbidden(
    run_probe: RunProbe, restricted_prefix: list[str], beacons: HostBeacons
) -> None:
    before = host_state()
    run = run_probe(beacons.args(), prefix=restricted_prefix)
    after = host_state()

    assert list(run.results) == list(CHECKS)
    for check, result in run.results.items():
        if check in CONTROLS:
            assert result.allowed, result
        elif check in KERNEL_CONFIG:
            assert result.verdict in ("forbidden", "inconclusive"), result
        else:
            assert result.forbidden, result
    # the reasons are the ones the environment set up
    errnos = {c: r.errno for c, r in run.results.items()}
    assert errnos["sysctl.proc_sys"] == "EROFS" and errnos["sysctl.sys"] == "EROFS"
    assert errnos["host_processes.kill"] == "ESRCH"
    assert errnos["keyring.syscall"] == "EPERM" and errnos["new_userns.unshare"] == "EPERM"
    assert errnos["chflags.immutable"] == "EPERM" and errnos["mount.tmpfs"] == "EPERM"

    facts = run.facts
    assert facts["pid"] == "2" and facts["ppid"] == "1"
    assert facts["hostname"] == "stockade-probe-restricted"
    assert int(facts["cap_eff"], 16) == KEPT_CAPS and int(facts["cap_bnd"], 16) == KEPT_CAPS
    assert facts["no_new_privs"] == "1" and facts["seccomp"] == "2"
    assert int(facts["processes_visible"]) <= 3
    for ns in ("pid", "net", "mnt", "uts", "ipc"):
        assert facts[f"ns_{ns}"] != os.readlink(f"/proc/self/ns/{ns}"), ns
    assert not diff_state(before, after), f"the probe changed the host: {diff_state(before, after)}"
