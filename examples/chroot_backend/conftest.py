"""Load stockade's conformance suite as a pytest plugin, before any test module imports it.

A root conftest (or ``-p stockade.testing``, or ``addopts``) is early enough for pytest to
rewrite the suite's assertions; ``pytest_plugins`` in a test module that imports the suite
is not (pytest warns: "Module already imported so cannot be rewritten").
"""

pytest_plugins = ["stockade.testing"]
