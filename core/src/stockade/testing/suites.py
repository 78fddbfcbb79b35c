"""All the abstract suites in one class: what a backend's test module usually subclasses."""

from __future__ import annotations

from .suite_isolation import IsolationSuite
from .suite_lifecycle import LifecycleSuite
from .suite_quota import QuotaSuite
from .suite_restrictions import RestrictionSuite
from .suite_storage import StorageSuite


class ConformanceSuite(IsolationSuite, RestrictionSuite, QuotaSuite, StorageSuite, LifecycleSuite):
    """Every conformance test; subclass it and supply ``stockade_backends``."""


__all__ = [
    "ConformanceSuite",
    "IsolationSuite",
    "LifecycleSuite",
    "QuotaSuite",
    "RestrictionSuite",
    "StorageSuite",
]
