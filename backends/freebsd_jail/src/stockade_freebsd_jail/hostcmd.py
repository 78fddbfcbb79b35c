"""Running the argv plans (ifconfig, route, zfs) on the host or inside a jail, and reading
``mount -p``. FreeBSD base commands; only called on FreeBSD."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterable

from stockade.errors import IsolationError
from stockade.interfaces import Stdio
from stockade.spec import DEFAULT_ENV, Process

from .helper import spawn
from .network import Step, substitute


def host_interfaces() -> set[str]:
    out = subprocess.run(["ifconfig", "-l"], capture_output=True, text=True, check=False).stdout
    return set(out.split())


def run_steps(
    steps: Iterable[Step], *, enter: Callable[[], None] | None = None, captured: dict[str, str] | None = None
) -> dict[str, str]:
    """Run each step; ``enter`` (jail_attach) for steps whose ``where`` is "jail"."""
    captured = {} if captured is None else captured
    for step in steps:
        if step.only_if_missing and step.only_if_missing in host_interfaces():
            continue
        argv = substitute(step.argv, captured)
        if step.where == "jail":
            if enter is None:
                raise IsolationError(f"{' '.join(argv)}: no jail to run it in")
            status, output = _run_in_jail(enter, argv)
        else:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            status, output = proc.returncode, proc.stdout + proc.stderr
        if status != 0 and step.check:
            raise IsolationError(
                f"{' '.join(argv)} failed ({step.where}, status {status}): {output.strip()[:300]}"
            )
        if step.capture:
            value = output.strip().splitlines()[0] if output.strip() else ""
            captured[step.capture] = value.removesuffix(step.strip_suffix)
    return captured


def _run_in_jail(enter: Callable[[], None], argv: tuple[str, ...]) -> tuple[int, str]:
    r, w = os.pipe()
    try:
        spawned = spawn(
            enter,
            Process(args=argv, env=dict(DEFAULT_ENV)),
            Stdio(stdin=None, stdout=w, stderr=w),
            what=" ".join(argv),
        )
    finally:
        os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(spawned.pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def parse_mount_p(text: str) -> list[tuple[str, str, str]]:
    """``mount -p`` (fstab format, spaces as \\040) -> [(source, mount point, fstype)]."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            out.append(tuple(p.replace("\\040", " ") for p in parts[:3]))
    return out  # type: ignore[return-value]


def current_mounts() -> list[tuple[str, str, str]]:
    with contextlib.suppress(OSError):
        proc = subprocess.run(["mount", "-p"], capture_output=True, text=True, check=False)
        return parse_mount_p(proc.stdout)
    return []
