"""The verified feature matrix: a row per backend combination, a cell per feature and restriction.

Built from the outcome records the pytest plugin writes (``--stockade-results``); each
cell aggregates the tests of its column: any failure fails it, else any pass passes it
(with notes for the parts that were inconclusive or not supported), else it says why
nothing could be shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..features import Feature, Restriction

FEATURE_TITLES: dict[str, str] = {
    Feature.FS_ISOLATION: "file-system isolation",
    Feature.COPY_ON_WRITE: "copy-on-write",
    Feature.SNAPSHOT: "snapshot + rollback",
    Feature.DISK_QUOTA: "disk quota",
    Feature.IO_RATE_LIMIT: "I/O rate limit",
    Feature.MEMORY_LIMIT: "memory limit",
    Feature.CPU_QUOTA: "CPU quota",
    Feature.PIDS_LIMIT: "pids limit",
    Feature.FREEZE: "freeze",
    Feature.NETWORK_ISOLATION: "network isolation",
    Feature.CHECKPOINT: "checkpoint",
    Feature.LIVE_MIGRATION: "live migration",
    "lifecycle": "lifecycle + clean delete",
}
FEATURE_COLUMNS: tuple[str, ...] = tuple(str(k) for k in FEATURE_TITLES)
RESTRICTION_COLUMNS: tuple[str, ...] = tuple(f"restriction.{r.value}" for r in Restriction)
ORDER = ("fail", "pass", "inconclusive", "cannot run here", "not supported", "skipped")
SHORT = {
    "pass": "pass",
    "fail": "**FAIL**",
    "inconclusive": "inconclusive",
    "cannot run here": "cannot run here",
    "not supported": "not supported",
    "skipped": "skipped",
}


@dataclass
class Cell:
    outcome: str
    why: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tests: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> Cell:
        outcomes = [str(r.get("outcome") or "skipped") for r in records]
        outcome = next((o for o in ORDER if o in outcomes), "skipped")
        why = _unique(str(r.get("why", "")) for r in records if r.get("outcome") == outcome)
        notes: list[str] = []
        for r in records:
            notes.extend(str(n) for n in r.get("notes", []))
            if outcome in ("pass", "fail") and r.get("outcome") not in (outcome, "pass", None):
                notes.append(f"{_test_name(r)}: {r.get('outcome')}: {r.get('why', '')}")
        tests = [
            {"test": _test_name(r), "outcome": r.get("outcome"), "why": r.get("why", "")} for r in records
        ]
        return cls(outcome, [w for w in why if w], _unique(notes), tests)

    def to_json(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "why": self.why, "notes": self.notes, "tests": self.tests}


@dataclass
class Row:
    label: str
    backends: dict[str, Any]
    cells: dict[str, Cell]
    duration: float = 0.0


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def _test_name(record: Mapping[str, Any]) -> str:
    return str(record.get("nodeid", "")).rsplit("::", 1)[-1]


@dataclass
class Matrix:
    rows: list[Row]
    command: str = ""
    machine: str = ""

    @classmethod
    def from_results(cls, runs: Iterable[Mapping[str, Any]], command: str = "") -> Matrix:
        rows: dict[str, Row] = {}
        grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for run in runs:
            subjects = run.get("subjects", {})
            for rec in run.get("records", []):
                subj = subjects.get(rec.get("class"), {})
                label = str(subj.get("label") or rec.get("class") or "?")
                if label not in rows:
                    rows[label] = Row(label, dict(subj.get("backends", {})), {})
                    rows[label].duration = float(run.get("duration", 0.0))
                grouped.setdefault(label, {}).setdefault(str(rec["column"]), []).append(rec)
        for label, columns in grouped.items():
            rows[label].cells = {col: Cell.of(recs) for col, recs in columns.items()}
        return cls(list(rows.values()), command, _machine())

    # --- rendering ------------------------------------------------------------------------

    def columns(self) -> tuple[list[str], list[str]]:
        present = {c for r in self.rows for c in r.cells}
        feats = [c for c in FEATURE_COLUMNS if c in present]
        feats += sorted(c for c in present if c not in FEATURE_COLUMNS and not c.startswith("restriction."))
        restr = [c for c in RESTRICTION_COLUMNS if c in present]
        return feats, restr

    def to_json(self) -> str:
        return json.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "rows": [
                    {
                        "label": r.label,
                        "backends": r.backends,
                        "duration_s": round(r.duration, 1),
                        "cells": {c: cell.to_json() for c, cell in r.cells.items()},
                    }
                    for r in self.rows
                ],
            },
            indent=1,
        )

    def to_text(self) -> str:
        lines = []
        for r in self.rows:
            lines.append(f"{r.label}:")
            feats, restr = self.columns()
            for col in feats + restr:
                cell = r.cells.get(col)
                if cell is None:
                    continue
                why = f" ({'; '.join(cell.why)})" if cell.why and cell.outcome != "pass" else ""
                lines.append(f"  {col:<28} {cell.outcome}{why}"[:240])
        return "\n".join(lines)

    def to_markdown(self) -> str:
        feats, restr = self.columns()
        notes: list[str] = []
        out: list[str] = []
        if self.command:
            out += [
                f"Generated with `{self.command}`" + (f" on {self.machine}" if self.machine else "") + ".",
                "",
            ]
        for title, cols, names in (
            ("Features", feats, [FEATURE_TITLES.get(c, c) for c in feats]),
            (
                "Restrictions (enforced by default / relaxable with `allow`)",
                restr,
                [c.removeprefix("restriction.") for c in restr],
            ),
        ):
            if not cols:
                continue
            out += [f"### {title}", "", "| backends | " + " | ".join(names) + " |"]
            out.append("|---|" + "---|" * len(cols))
            for r in self.rows:
                cells = []
                for col in cols:
                    cell = r.cells.get(col)
                    if cell is None:
                        cells.append("-")
                        continue
                    text = SHORT.get(cell.outcome, cell.outcome)
                    detail = [] if cell.outcome in ("pass", "not supported") else cell.why
                    detail = detail + cell.notes
                    if detail:
                        # the same reason in many cells (a backend that cannot run) is one note
                        key = "; ".join(detail)
                        if key not in notes:
                            notes.append(key)
                        text += f" [{notes.index(key) + 1}]"
                    cells.append(text)
                out.append(f"| `{r.label}` | " + " | ".join(cells) + " |")
            out.append("")
        if notes:
            out += ["### Notes", ""]
            out += [f"{i}. {_md_escape(n)}" for i, n in enumerate(notes, 1)]
            out.append("")
        durations = [f"`{r.label}` {r.duration:.0f} s" for r in self.rows if r.duration]
        if durations:
            out += ["Suite run time: " + ", ".join(durations) + ".", ""]
        return "\n".join(out)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _machine() -> str:
    import os
    import platform

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 0
    return f"{platform.system()} {platform.release()}, {cores} cores"
