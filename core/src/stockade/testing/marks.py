"""The suite's markers, built without ``pytest.mark.<name>``.

``pytest.mark.requires`` fails under ``--strict-markers`` when this module is imported
before the plugin registered the marker, which is what happens when a test module
names the plugin in ``pytest_plugins`` (its imports run first). Building the Mark
directly is what ``pytest.mark`` does after its check.
"""

from __future__ import annotations

import pytest

from ..features import Feature, Restriction


def _mark(name: str, *args: object, **kwargs: object) -> pytest.MarkDecorator:
    return pytest.MarkDecorator(pytest.Mark(name, args, kwargs, _ispytest=True), _ispytest=True)


def requires(what: Feature | Restriction, *, relaxable: bool = False) -> pytest.MarkDecorator:
    """The chosen backends must declare ``what`` (a restriction: enforce it; ``relaxable``:
    also let a spec relax it), else the test is reported "not supported"."""
    if relaxable:
        return _mark("requires", what, relaxable=True)
    return _mark("requires", what)


def conformance_column(name: str) -> pytest.MarkDecorator:
    """The feature-matrix column a test without a ``requires`` marker counts for."""
    return _mark("conformance_column", name)
