"""The chroot backend through stockade's conformance suite: it must pass as declared.

Run: .venv/bin/pytest examples/chroot_backend/tests (with the package installed: the
backend is found through its entry point). The package's root conftest.py loads the
plugin (``pytest_plugins``); ``-p stockade.testing`` on the command line does the same.
Not ``pytest_plugins`` here: this module imports the suite, so pytest would meet the plugin
already imported and could not rewrite its assertions (PytestAssertRewriteWarning).
"""

from __future__ import annotations

from stockade.testing import BackendChoice, ConformanceSuite


class TestChroot(ConformanceSuite):
    # Quota and storage are other backends' concerns: any that runs here will do.
    backends = BackendChoice(isolation="chroot", quota="cgroup", storage="dir")
