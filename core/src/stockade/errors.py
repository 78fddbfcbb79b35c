"""The StockadeError hierarchy.

Every error stockade raises on purpose is a StockadeError: one line for the user
(what, which field or instance, what to do), an ``errno`` when one applies, and
the native error chained with ``raise ... from`` for ``--debug``.
"""

from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False  # the thin CLI imports this module: no typing, no collections
if TYPE_CHECKING:
    from collections.abc import Iterable


class StockadeError(Exception):
    """Base of every stockade error. ``str(err)`` is the one line shown to users."""

    errno: int = _errno.EIO
    exit_code: int = 1

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


# --- spec ---------------------------------------------------------------------------------


class SpecError(StockadeError):
    """The spec is invalid. Carries every problem found, each with its field path."""

    errno = _errno.EINVAL
    exit_code = 2

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems: list[tuple[str, str]] = list(problems)
        text = "; ".join(f"{path}: {msg}" if path else msg for path, msg in self.problems)
        super().__init__(f"invalid spec: {text}")


class UnsupportedFeature(StockadeError):
    """The spec asks for something the chosen backends do not provide."""

    errno = _errno.ENOTSUP
    exit_code = 2


# --- backend ------------------------------------------------------------------------------


class BackendError(StockadeError):
    """A backend could not be found, loaded or used."""


class NotSupported(BackendError):
    """The backend does not implement this operation."""

    errno = _errno.ENOTSUP


class Unavailable(BackendError):
    """The backend is installed but cannot run on this host (probe() says why)."""

    errno = _errno.ENODEV


class BackendNotFound(BackendError):
    errno = _errno.ENOENT
    exit_code = 2


# --- instance -----------------------------------------------------------------------------


class InstanceError(StockadeError):
    """An error about a particular instance."""


class NotFound(InstanceError):
    errno = _errno.ENOENT


class AlreadyExists(InstanceError):
    errno = _errno.EEXIST


class StateConflict(InstanceError):
    """The instance is in the wrong state for the operation (e.g. delete while running)."""

    errno = _errno.EBUSY


class ImageNotFound(InstanceError):
    errno = _errno.ENOENT


# --- per concern --------------------------------------------------------------------------


class IsolationError(StockadeError):
    pass


class QuotaError(StockadeError):
    pass


class StorageError(StockadeError):
    pass


class QuotaExceeded(StorageError):
    errno = _errno.EDQUOT


class MigrationError(StockadeError):
    pass
