"""The verbs that go through the host's supervisor: run, create, start.

This is the CLI's hot path, so it imports no Host, no backend and no plugin machinery:
the flags become a spec dict here, the warm supervisor validates and runs it (errors come
back as the same one-line StockadeError). ``STOCKADE_SUPERVISOR=0`` runs attached
instances in this process instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal

from ..errors import SpecError, StockadeError
from ..paths import root_of, run_dir_of
from .specargs import spec_from_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


def spec_dict(ns: argparse.Namespace, name: str) -> dict[str, Any]:
    flags = spec_from_args(ns, name, list(ns.cmd or []))
    if not ns.spec:
        return flags
    import tomllib

    try:
        with open(ns.spec, "rb") as f:
            base = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError([("--spec", f"file {ns.spec!r} not found")]) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError([("--spec", f"{ns.spec!r} is not valid TOML: {e}")]) from e
    from ..spec import merge

    return merge(base, flags)


def _where(ns: argparse.Namespace) -> tuple[str, str]:
    root = root_of(ns.root)
    return root, run_dir_of(root)


def cmd_run(ns: argparse.Namespace) -> int:
    name = ns.name or f"run-{os.urandom(4).hex()}"
    if ns.detach:
        if ns.rm:
            raise StockadeError("--rm and -d together are not supported yet: delete it when done")
        return _create(ns, name, start=True)
    if os.environ.get("STOCKADE_SUPERVISOR", "1") == "0":
        from .commands import run_in_process

        return run_in_process(ns, name)
    return _run_attached(ns, name)


def _run_attached(ns: argparse.Namespace, name: str) -> int:
    from ..supervisor_client import exchange

    spec = spec_dict(ns, name)
    root, run_dir = _where(ns)
    null = None
    if ns.tty:
        fds: list[int] = []
    elif ns.interactive:
        fds = [0, 1, 2]
    else:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        fds = [null, 1, 2]
    try:
        conn, reply, got = exchange(
            root, run_dir, {"op": "run", "spec": spec, "terminal": bool(ns.tty), "rm": bool(ns.rm)}, fds
        )
    finally:
        if null is not None:
            os.close(null)
    try:

        def forward(signum: int, _frame: object) -> None:
            from ..supervisor_client import request

            with contextlib.suppress(StockadeError):  # it has just exited
                request(root, run_dir, {"op": "kill", "name": reply["name"], "signal": signum})

        for s in FORWARDED:
            signal.signal(s, forward)
        if got:
            from .tty import proxy

            proxy(got[0])
            os.close(got[0])
        while True:
            try:
                event, _ = conn.receive()
                break
            except InterruptedError:
                continue
        if event is None:
            raise StockadeError("the stockade supervisor went away before the instance exited")
        return int(event["exit_status"])
    finally:
        conn.close()


def _create(ns: argparse.Namespace, name: str, start: bool) -> int:
    from ..supervisor_client import request

    root, run_dir = _where(ns)
    reply = request(root, run_dir, {"op": "create", "spec": spec_dict(ns, name), "start": start})
    print(reply["name"])
    return 0


def cmd_create(ns: argparse.Namespace) -> int:
    return _create(ns, ns.name, start=False)


def cmd_start(ns: argparse.Namespace) -> int:
    from ..supervisor_client import request

    root, run_dir = _where(ns)
    for name in ns.names:
        request(root, run_dir, {"op": "start", "name": name})
    return 0


HANDLERS = {"run": cmd_run, "create": cmd_create, "start": cmd_start}
