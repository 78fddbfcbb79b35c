"""rctl(8) rules as data: the resource x action validity matrix, unit expansion, pcpu rounding,
and the rules a spec's resources become.

Rules go to ``rctl_add_rule(2)`` in the kernel's own syntax
(``subject:subject-id:resource:action=amount``): full names, plain numbers, no unit
suffixes (``rctl(8)`` expands ``1g`` itself; the syscall does not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from stockade.spec import Resources

# racct_types[] (sys/kern/kern_racct.c): which resources are deniable and which decay.
DENIABLE = frozenset(
    {
        "datasize",
        "stacksize",
        "coredumpsize",
        "memorylocked",
        "maxproc",
        "openfiles",
        "vmemoryuse",
        "pseudoterminals",
        "swapuse",
        "nthr",
        "msgqqueued",
        "msgqsize",
        "nmsgq",
        "nsem",
        "nsemop",
        "nshm",
        "shmsize",
        "pcpu",
    }
)
DECAYING = frozenset({"pcpu", "readbps", "writebps", "readiops", "writeiops"})
RESOURCES = frozenset({*DENIABLE, *DECAYING, "cputime", "memoryuse", "wallclock"})
SUBJECTS = frozenset({"process", "user", "loginclass", "jail"})
SIGNALS = frozenset(
    {
        "sighup",
        "sigint",
        "sigquit",
        "sigkill",
        "sigterm",
        "sigxcpu",
        "sigxfsz",
        "sigusr1",
        "sigusr2",
        "sigstop",
        "sigcont",
        "sigalrm",
    }
)
ACTIONS = frozenset({"deny", "log", "devctl", "throttle", *SIGNALS})
IO_RESOURCES = ("readbps", "writebps", "readiops", "writeiops")


def action_problem(resource: str, action: str) -> str | None:
    """Why the kernel would refuse ``resource:action`` (rctl_rule_add: EOPNOTSUPP), else None."""
    if resource not in RESOURCES:
        return f"unknown resource {resource!r}"
    if action not in ACTIONS:
        return f"unknown action {action!r}"
    if action == "deny" and resource not in DENIABLE and resource != "memoryuse":
        hint = "; use throttle" if resource in IO_RESOURCES else ""
        return f"{resource} cannot be denied{hint}"
    if action == "throttle" and (resource not in DECAYING or resource == "pcpu"):
        return f"{resource} cannot be throttled (only {', '.join(IO_RESOURCES)})"
    return None


_AMOUNT_RE = re.compile(r"^(\d+)([kmgtpe]?)b?$", re.IGNORECASE)
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def expand_amount(text: str) -> int:
    """'1g' -> 1073741824, as rctl(8)'s expand_number does (binary units). Raises ValueError."""
    m = _AMOUNT_RE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an amount (a number with an optional k, m, g, t, p, e)")
    return int(m.group(1)) << _SHIFT[m.group(2).lower()]


def pcpu(cores: float) -> int:
    """Cores -> rctl's percent of one CPU, rounded half up, at least 1 (1.5 -> 150)."""
    pct = (Decimal(str(cores)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return max(1, int(pct))


@dataclass(frozen=True)
class Rule:
    subject: str
    subject_id: str
    resource: str
    action: str
    amount: int

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError(f"rctl rule {self.text()!r}: {'; '.join(problems)}")

    def problems(self) -> list[str]:
        out = []
        if self.subject not in SUBJECTS:
            out.append(f"unknown subject {self.subject!r}")
        if not self.subject_id or any(c in self.subject_id for c in ":,/= \n"):
            out.append(f"subject id {self.subject_id!r} must be non-empty, without ':,/='")
        why = action_problem(self.resource, self.action)
        if why:
            out.append(why)
        if self.amount < 0:
            out.append("amount must not be negative")
        return out

    def text(self) -> str:
        return f"{self.subject}:{self.subject_id}:{self.resource}:{self.action}={self.amount}"

    def __str__(self) -> str:
        return self.text()

    @classmethod
    def parse(cls, text: str) -> Rule:
        """'jail:web:memoryuse:deny=1g' -> Rule (amount expanded). Raises ValueError."""
        head, eq, amount = text.partition("=")
        parts = head.split(":")
        if not eq or len(parts) != 4 or "/" in amount:
            raise ValueError(f"{text!r} is not subject:id:resource:action=amount")
        return cls(parts[0], parts[1], parts[2], parts[3], expand_amount(amount))


def jail_filter(jail: str) -> str:
    """The filter that names every rule of a jail (rctl_remove_rule, rctl_get_racct)."""
    return f"jail:{jail}:"


def rules_for(resources: Resources, jail: str) -> list[Rule]:
    """The rules for a spec's limits. I/O is throttled, never denied (the kernel refuses deny)."""
    r = resources
    out: list[Rule] = []
    if r.memory is not None:
        out.append(Rule("jail", jail, "memoryuse", "deny", r.memory))
    if r.cpus is not None:
        out.append(Rule("jail", jail, "pcpu", "deny", pcpu(r.cpus)))
    if r.pids is not None:
        out.append(Rule("jail", jail, "maxproc", "deny", r.pids))
    io = r.io
    for resource, value in zip(
        IO_RESOURCES, (io.read_bps, io.write_bps, io.read_iops, io.write_iops), strict=True
    ):
        if value is not None:
            out.append(Rule("jail", jail, resource, "throttle", value))
    return out


def unsupported(resources: Resources) -> list[str]:
    """Limits of the spec rctl cannot apply, one line each."""
    r = resources
    out = []
    if r.memory_swap is not None and r.memory_swap != -1:
        out.append(
            "resources.memory_swap: rctl has no memory+swap limit (swapuse counts swap "
            "reservations, a different thing)"
        )
    if r.memory_reservation is not None:
        out.append("resources.memory_reservation: rctl has no soft memory limit")
    if r.cpu_weight is not None:
        out.append("resources.cpu_weight: rctl has no CPU weights (only pcpu caps)")
    if r.cpuset_cpus is not None or r.cpuset_mems is not None:
        out.append("resources.cpuset_*: CPU/memory-domain pinning (cpuset -j) is not implemented")
    return out


def parse_racct(text: str) -> dict[str, int]:
    """'cputime=3,memoryuse=1024,...' -> {name: amount} (rctl_get_racct's answer)."""
    out: dict[str, int] = {}
    for item in text.strip().strip("\0").split(","):
        key, eq, value = item.partition("=")
        if eq and value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def parse_rules(text: str) -> list[str]:
    """rctl_get_rules's comma-separated answer -> rule strings."""
    return [r for r in text.strip().strip("\0").split(",") if r]
