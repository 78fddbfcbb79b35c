"""The chroot backend through stockade's conformance suite: it must pass as declared.

Run: .venv/bin/pytest -p stockade.testing examples/chroot_backend/tests
(with the package installed; otherwise the suite's own tests register it in-process).
"""

from __future__ import annotations

from stockade.testing import BackendChoice, ConformanceSuite


class TestChroot(ConformanceSuite):
    # Quota and storage are other backends' concerns: any that runs here will do.
    backends = BackendChoice(isolation="chroot", quota="cgroup", storage="dir")
