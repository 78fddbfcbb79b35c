"""The conformance suite against the in-tree Linux backends: linux_ns + cgroup + overlay."""

from __future__ import annotations

from stockade.testing import BackendChoice, ConformanceSuite

pytest_plugins = ["stockade.testing"]


class TestLinuxNsCgroupOverlay(ConformanceSuite):
    backends = BackendChoice(isolation="linux_ns", quota="cgroup", storage="overlay")
    # Gaps the suite found and that are reported to their owners: strict xfail here so the
    # project's run stays green until they are fixed; docs/feature-matrix.md shows them.
    known_failures = {
        "test_live_migration_keeps_process_state": (
            "the target reports the instance moved, but Host(target root).get(name) raises NotFound"
        ),
    }
