"""Delegating a ZFS dataset to a jail (``jailed=on`` + ``zfs jail``), as a plan.

The zfs storage backend owns datasets; when it puts a dataset name in
``ctx.data["storage"]["jail_dataset"]``, the isolation backend delegates it. A
delegated dataset is managed from inside the jail, which needs ``allow.mount``,
``allow.mount.zfs``, ``enforce_statfs < 2`` and a visible /dev/zfs (devfs ruleset 4
unhides it); once jailed it can no longer be mounted on the host (zfs-jail(8)).
"""

from __future__ import annotations

from dataclasses import dataclass

from .iovec import Params
from .network import Step

STORAGE_KEY = "jail_dataset"


@dataclass(frozen=True)
class Delegation:
    params: Params  # added to jail_set (they replace the same names from the base table)
    before_create: tuple[Step, ...]
    after_create: tuple[Step, ...]
    teardown: tuple[Step, ...]  # before jail_remove


def plan_delegation(dataset: str, jail: str) -> Delegation:
    return Delegation(
        params=[("allow.mount", True), ("allow.mount.zfs", True), ("enforce_statfs", 1)],
        before_create=(Step(("zfs", "set", "jailed=on", dataset)),),
        after_create=(Step(("zfs", "jail", jail, dataset)),),
        teardown=(Step(("zfs", "unjail", jail, dataset), check=False),),
    )


def merge_params(base: Params, extra: Params) -> Params:
    """``base`` with ``extra``'s values replacing the same names, new names appended."""
    override = dict(extra)
    merged = [(n, override.pop(n, v)) for n, v in base]
    return merged + list(override.items())
