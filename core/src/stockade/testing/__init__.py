"""stockade's conformance suite: an opt-in pytest plugin and abstract test classes.

Opt in with ``-p stockade.testing`` (or ``pytest_plugins = ["stockade.testing"]``), then
subclass ``ConformanceSuite`` (or one suite per concern) and supply the
``stockade_backends`` fixture; docs/conformance.md. The in-instance probe is
``stockade.testing.probe``.
"""

from __future__ import annotations

from .outcomes import cannot_run, inconclusive, not_supported
from .plugin import (
    _stockade_requires,
    check_declared,
    note,
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    stockade_backends,
    stockade_beacons,
    stockade_declared,
    stockade_host,
    stockade_probe_baseline,
    stockade_subject,
)
from .subject import BackendChoice, Subject
from .suites import (
    ConformanceSuite,
    IsolationSuite,
    LifecycleSuite,
    QuotaSuite,
    RestrictionSuite,
    StorageSuite,
)

__all__ = [
    "BackendChoice",
    "ConformanceSuite",
    "IsolationSuite",
    "LifecycleSuite",
    "QuotaSuite",
    "RestrictionSuite",
    "StorageSuite",
    "Subject",
    "_stockade_requires",
    "cannot_run",
    "check_declared",
    "inconclusive",
    "not_supported",
    "note",
    "pytest_addoption",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_runtest_makereport",
    "stockade_backends",
    "stockade_beacons",
    "stockade_declared",
    "stockade_host",
    "stockade_probe_baseline",
    "stockade_subject",
]
