"""stockade: one API over OS-level virtualization (Linux namespaces, FreeBSD jails).

The public API. Names load on first use (PEP 562) so that importing one part, say
``stockade.errors`` from a backend, does not import the rest.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing costs milliseconds on the run path

if TYPE_CHECKING:
    from .errors import (
        AlreadyExists,
        BackendError,
        ImageNotFound,
        InstanceError,
        IsolationError,
        NotFound,
        NotSupported,
        QuotaError,
        SpecError,
        StateConflict,
        StockadeError,
        StorageError,
        Unavailable,
        UnsupportedFeature,
    )
    from .features import Feature, Probe, Restriction, Semantics
    from .host import BackendInfo, ExecResult, Host, Instance, Stats
    from .interfaces import (
        BackendBase,
        BackendConfig,
        InstanceContext,
        IsolationBackend,
        IsolationBase,
        QuotaBackend,
        QuotaBase,
        QuotaStats,
        RootFS,
        Snapshot,
        Spawned,
        Stdio,
        StorageBackend,
        StorageBase,
        StorageUsage,
    )
    from .plugins import PluginManager, Registry, hookimpl
    from .spec import InstanceSpec, IOLimits, Mount, Network, Process, Resources, parse_size

_WHERE = {
    "errors": [
        "AlreadyExists",
        "BackendError",
        "ImageNotFound",
        "InstanceError",
        "IsolationError",
        "NotFound",
        "NotSupported",
        "QuotaError",
        "SpecError",
        "StateConflict",
        "StockadeError",
        "StorageError",
        "Unavailable",
        "UnsupportedFeature",
    ],
    "features": ["Feature", "Probe", "Restriction", "Semantics"],
    "host": ["BackendInfo", "ExecResult", "Host", "Instance", "Stats"],
    "interfaces": [
        "BackendBase",
        "BackendConfig",
        "InstanceContext",
        "IsolationBackend",
        "IsolationBase",
        "QuotaBackend",
        "QuotaBase",
        "QuotaStats",
        "RootFS",
        "Snapshot",
        "Spawned",
        "Stdio",
        "StorageBackend",
        "StorageBase",
        "StorageUsage",
    ],
    "plugins": ["PluginManager", "Registry", "hookimpl"],
    "spec": ["InstanceSpec", "IOLimits", "Mount", "Network", "Process", "Resources", "parse_size"],
}
_MODULE_OF = {name: mod for mod, names in _WHERE.items() for name in names}
__all__ = [
    "AlreadyExists",
    "BackendBase",
    "BackendConfig",
    "BackendError",
    "BackendInfo",
    "ExecResult",
    "Feature",
    "Host",
    "IOLimits",
    "ImageNotFound",
    "Instance",
    "InstanceContext",
    "InstanceError",
    "InstanceSpec",
    "IsolationBackend",
    "IsolationBase",
    "IsolationError",
    "Mount",
    "Network",
    "NotFound",
    "NotSupported",
    "PluginManager",
    "Probe",
    "Process",
    "QuotaBackend",
    "QuotaBase",
    "QuotaError",
    "QuotaStats",
    "Registry",
    "Resources",
    "Restriction",
    "RootFS",
    "Semantics",
    "Snapshot",
    "Spawned",
    "SpecError",
    "StateConflict",
    "Stats",
    "Stdio",
    "StockadeError",
    "StorageBackend",
    "StorageBase",
    "StorageError",
    "StorageUsage",
    "Unavailable",
    "UnsupportedFeature",
    "hookimpl",
    "parse_size",
]


def __getattr__(name: str) -> object:
    mod = _MODULE_OF.get(name)
    if mod is None:
        raise AttributeError(f"module 'stockade' has no attribute {name!r}")
    # __import__, not importlib.import_module: importing importlib costs the thin CLI ~1 ms
    value = getattr(__import__(f"{__name__}.{mod}", fromlist=[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
