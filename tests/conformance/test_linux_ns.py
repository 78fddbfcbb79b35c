"""The conformance suite against the in-tree Linux backends: linux_ns + cgroup + overlay."""

from __future__ import annotations

from stockade.testing import BackendChoice, ConformanceSuite

pytest_plugins = ["stockade.testing"]


class TestLinuxNsCgroupOverlay(ConformanceSuite):
    backends = BackendChoice(isolation="linux_ns", quota="cgroup", storage="overlay")
