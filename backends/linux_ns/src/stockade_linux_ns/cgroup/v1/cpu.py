"""v1 cpu: CFS bandwidth (cfs_quota_us / cfs_period_us) and cpu.shares."""

from __future__ import annotations

import errno
import os

from stockade.spec import Resources

from .. import fs

CONTROLLER = "cpu"


def weight_to_shares(weight: int) -> int:
    """cgroup v2 cpu.weight (1..10000) -> v1 cpu.shares (2..262144).

    The linear map runc and crun use between the two ranges (the inverse of their
    shares -> weight conversion: weight = 1 + (shares - 2) * 9999 / 262142).
    """
    return 2 + ((weight - 1) * 262142) // 9999


def quota_us(cpus: float, period_us: int) -> int:
    # CFS refuses quotas below 1 ms.
    return max(1000, round(cpus * period_us))


def apply(path: str, res: Resources) -> None:
    if res.cpus is not None:
        f_period = os.path.join(path, "cpu.cfs_period_us")
        f_quota = os.path.join(path, "cpu.cfs_quota_us")
        quota = quota_us(res.cpus, res.cpu_period_us)
        try:
            fs.write(f_period, res.cpu_period_us)
            fs.write(f_quota, quota)
        except OSError as e:
            # A shorter period can make the old quota exceed what the parent allows.
            if e.errno != errno.EINVAL:
                raise
            fs.write(f_quota, quota)
            fs.write(f_period, res.cpu_period_us)
    if res.cpu_weight is not None:
        fs.write(os.path.join(path, "cpu.shares"), weight_to_shares(res.cpu_weight))


def stats(path: str) -> dict[str, float | None]:
    quota = fs.read_int(os.path.join(path, "cpu.cfs_quota_us"))
    period = fs.read_int(os.path.join(path, "cpu.cfs_period_us"))
    if quota is None or quota < 0 or not period:
        return {"cpu_quota": None}
    return {"cpu_quota": quota / period}
