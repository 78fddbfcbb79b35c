"""`stockade conformance`: run the conformance suite and write the verified feature matrix."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

from ..errors import StockadeError

if TYPE_CHECKING:
    from ..host import Host


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--isolation", metavar="NAME", help="only this isolation backend (default: each installed)"
    )
    p.add_argument("--quota", metavar="NAME", help="only this quota backend")
    p.add_argument("--storage", metavar="NAME", help="only this storage backend")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="BACKEND.KEY=VALUE",
        help="a backend option (repeatable), e.g. overlay.quota_fs=btrfs; VALUE is JSON or a string",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="NAME",
        help="only this matrix column (repeatable): a feature (memory_limit, disk_quota, ...) or a "
        "restriction (mount, or restriction.mount)",
    )
    p.add_argument("--report", choices=("md", "json"), default="md", help="matrix format (default md)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the matrix here (default: stdout)")


def cmd_conformance(ns: argparse.Namespace, host: Host) -> int:
    """Exit 0 if every declared feature held, 1 if one failed."""
    try:
        from ..testing.declared import options_of
        from ..testing.matrix import Matrix
        from ..testing.runner import combinations, run_combination
    except ImportError as e:
        raise StockadeError(
            f"the conformance suite needs pytest ({e.name} is missing): install stockade with pytest"
        ) from e
    try:
        options_of(ns.option)
    except ValueError as e:
        raise StockadeError(f"--option: {e}") from None
    extra = [f"--stockade-option={word}" for word in ns.option]
    extra += [f"--stockade-column={c}" for c in _columns(ns.column)]

    combos = combinations(
        host.plugins,
        ns.isolation,
        ns.quota,
        ns.storage,
        can_run=lambda k, n: host.probe(k, n).ok,  # type: ignore[arg-type]
    )
    if not combos:
        raise StockadeError("no backend combination to test: see `stockade backends`")

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runs = []
    for combo in combos:
        echo(f"{combo.label}: running the conformance suite")
        try:
            runs.append(run_combination(combo, parent=ns.root, pytest_args=extra, echo=echo))
        except (RuntimeError, OSError) as e:
            raise StockadeError(f"conformance run of {combo.label} failed: {e}") from e
    argv = ["stockade", "conformance"]
    for flag in ("isolation", "quota", "storage"):
        if getattr(ns, flag):
            argv += [f"--{flag}", getattr(ns, flag)]
    for word in ns.option:
        argv += ["--option", word]
    for c in ns.column:
        argv += ["--column", c]
    argv += ["--report", ns.report]
    matrix = Matrix.from_results(runs, command=shlex.join(argv))
    text = matrix.to_markdown() if ns.report == "md" else matrix.to_json()
    if ns.output:
        with open(ns.output, "w") as f:
            f.write(text + "\n")
        echo(f"matrix written to {ns.output}")
    else:
        sys.stdout.write(text + "\n")
    failed = any(cell.outcome == "fail" for row in matrix.rows for cell in row.cells.values())
    return 1 if failed else 0


def _columns(names: list[str]) -> list[str]:
    """Column names as the matrix spells them; a restriction may be given bare."""
    from ..testing.matrix import FEATURE_COLUMNS, RESTRICTION_COLUMNS

    out = []
    for n in names:
        col = n if n in FEATURE_COLUMNS or n.startswith("restriction.") else f"restriction.{n}"
        if col not in FEATURE_COLUMNS and col not in RESTRICTION_COLUMNS:
            known = ", ".join([*FEATURE_COLUMNS, *(c.split(".", 1)[1] for c in RESTRICTION_COLUMNS)])
            raise StockadeError(f"--column {n!r}: no such column (one of: {known})")
        out.append(col)
    return out
