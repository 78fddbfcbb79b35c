"""The verbs that go through the host's supervisor: run, create, start.

This is the CLI's hot path, so it imports no Host, no backend and no plugin machinery:
the flags become a spec dict here, the warm supervisor validates and runs it (errors come
back as the same one-line StockadeError). ``STOCKADE_SUPERVISOR=0`` runs attached
instances in this process instead.
"""

from __future__ import annotations

import argparse
import os

from ..errors import SpecError, StockadeError
from ..paths import root_of, run_dir_of
from .specargs import spec_from_args

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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


def run_name(ns: argparse.Namespace) -> str:
    """The name of the instance ``run`` makes; refuses what ``run`` cannot do."""
    if ns.detach and ns.rm:
        raise StockadeError("--rm and -d together are not supported yet: delete it when done")
    return str(ns.name or f"run-{os.urandom(4).hex()}")


def cmd_run(ns: argparse.Namespace) -> int:
    name = run_name(ns)
    if ns.detach:
        return _create(ns, name, start=True)
    if os.environ.get("STOCKADE_SUPERVISOR", "1") == "0":
        from .commands import run_in_process

        return run_in_process(ns, name)
    return _run_attached(ns, name)


def run_message(
    ns: argparse.Namespace, name: str, stdio: tuple[int, int, int]
) -> tuple[dict[str, Any], list[int], int | None]:
    """The supervisor's ``run`` request for these flags and the fds that go with it, picked
    from ``stdio`` (a terminal: none; ``-i``: all three; else /dev/null for stdin, which is
    the third value returned, for the caller to close once sent)."""
    msg = {"op": "run", "spec": spec_dict(ns, name), "terminal": bool(ns.tty), "rm": bool(ns.rm)}
    if ns.tty:
        return msg, [], None
    if ns.interactive:
        return msg, list(stdio), None
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return msg, [null, stdio[1], stdio[2]], null


def create_message(ns: argparse.Namespace, name: str, start: bool) -> dict[str, Any]:
    return {"op": "create", "spec": spec_dict(ns, name), "start": start}


def _run_attached(ns: argparse.Namespace, name: str) -> int:
    from ..supervisor_client import exchange
    from .forward import SignalRelay, attend

    root, run_dir = _where(ns)
    msg, fds, null = run_message(ns, name, (0, 1, 2))
    relay = SignalRelay(root, run_dir)
    try:
        conn, reply, got = exchange(root, run_dir, msg, fds)
    finally:
        if null is not None:
            os.close(null)
    return attend(conn, reply, got, relay)


def _create(ns: argparse.Namespace, name: str, start: bool) -> int:
    from ..supervisor_client import request

    root, run_dir = _where(ns)
    reply = request(root, run_dir, create_message(ns, name, start))
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
