"""The conformance suite against the in-tree Linux backends: linux_ns + cgroup + overlay."""

from __future__ import annotations

from stockade.testing import BackendChoice, ConformanceSuite


class TestLinuxNsCgroupOverlay(ConformanceSuite):
    backends = BackendChoice(isolation="linux_ns", quota="cgroup", storage="overlay")


class TestLinuxNsCgroupOverlayQuota(ConformanceSuite):
    """overlay with its disk-quota mode: uppers on a loop-backed btrfs (qgroups), which also
    gives the instance a block device for I/O rate limits."""

    backends = BackendChoice(
        isolation="linux_ns", quota="cgroup", storage="overlay", options={"overlay": {"quota_fs": "btrfs"}}
    )
