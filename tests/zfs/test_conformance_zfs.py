"""The conformance suite with zfs storage: linux_ns + cgroup + zfs, on a file-backed pool
(the VM tier: tests/vm/run.sh --zfs -- pytest tests/zfs)."""

from __future__ import annotations

import pytest
from stockade.testing import BackendChoice, ConformanceSuite


class TestLinuxNsCgroupZfs(ConformanceSuite):
    @pytest.fixture(scope="class")
    @classmethod
    def stockade_backends(cls, pool: str) -> BackendChoice:
        return BackendChoice(
            isolation="linux_ns",
            quota="cgroup",
            storage="zfs",
            options={"zfs": {"dataset": f"{pool}/stockade"}},
        )
