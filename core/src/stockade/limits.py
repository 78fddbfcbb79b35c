"""The names of the resource limits, shared by the spec, the Host and the CLI.

Kept apart from spec.py, and free of imports, because the CLI's run path builds its spec
dict from these names and must not pay for importing dataclasses and typing.
"""

# Resources fields the quota backend enforces (cgroups, rctl); the disk quota is the storage's.
QUOTA_LIMITS = (
    "memory",
    "memory_swap",
    "memory_reservation",
    "cpus",
    "cpu_weight",
    "cpuset_cpus",
    "cpuset_mems",
    "pids",
)

# IOLimits fields: rates on the block device behind the instance's storage.
IO_LIMITS = ("read_bps", "write_bps", "read_iops", "write_iops")
