"""The outcomes of a conformance test besides pass and fail, as pytest skip reasons.

pytest knows pass, fail and skip; the verified matrix needs more. A skip whose reason
starts with one of these prefixes is a distinct outcome the report understands; a skip
with any other reason is shown as "skipped" and counts as unexplained (never silent).
"""

from __future__ import annotations

from typing import Literal, NoReturn

import pytest

Outcome = Literal["pass", "fail", "not supported", "cannot run here", "inconclusive", "skipped"]

NOT_SUPPORTED = "not supported: "
CANNOT_RUN = "cannot run here: "
INCONCLUSIVE = "inconclusive: "
PREFIXES: dict[str, Outcome] = {
    NOT_SUPPORTED: "not supported",
    CANNOT_RUN: "cannot run here",
    INCONCLUSIVE: "inconclusive",
}


def not_supported(why: str) -> NoReturn:
    """The chosen backends do not declare what this test measures."""
    pytest.skip(NOT_SUPPORTED + why)


def cannot_run(why: str) -> NoReturn:
    """A host prerequisite is missing: the declaration cannot be measured on this machine."""
    pytest.skip(CANNOT_RUN + why)


def inconclusive(why: str) -> NoReturn:
    """The measurement ran but this kernel or this machine cannot show the answer."""
    pytest.skip(INCONCLUSIVE + why)


def classify_skip(reason: str) -> tuple[Outcome, str]:
    """A skip reason -> (outcome, the why without its prefix)."""
    reason = reason.removeprefix("Skipped: ")
    for prefix, outcome in PREFIXES.items():
        if reason.startswith(prefix):
            return outcome, reason[len(prefix) :]
    return "skipped", reason
