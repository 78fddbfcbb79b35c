"""The supervisor's half of a forwarded command line (cli/forward.py is the client's).

The warm supervisor parses argv with the full parser, so the client process imports
none of it. Output that argparse or a verb prints is captured and sent back, never
written to the client's fds from here: a full pipe must not stall the supervisor.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import TYPE_CHECKING, Any

from .main import parse
from .thin import create_message, run_message, run_name

if TYPE_CHECKING:
    from ..supervisor import Supervisor

Reply = tuple[dict[str, Any], list[int], "int | None"]


def serve(sup: Supervisor, msg: dict[str, Any], fds: list[int]) -> Reply:
    """Run one forwarded command; ``fds`` are the client's stdin, stdout and stderr."""
    taken: list[int] = []
    try:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                ns = parse([str(a) for a in msg.get("argv", [])])
        except SystemExit as e:  # a usage error, or --help
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
            return _finished(code, out.getvalue(), err.getvalue())
        if getattr(ns, "spec", None):
            ns.spec = os.path.join(str(msg.get("cwd", "/")), ns.spec)
        if ns.command == "run":
            name = run_name(ns)
            if not ns.detach:
                if len(fds) != 3:
                    raise ValueError("a forwarded run needs the client's three stdio fds")
                req, taken, _ = run_message(ns, name, (fds[0], fds[1], fds[2]))
                return sup._run(req, taken)  # which closes what it is given
            reply = sup._dispatch(create_message(ns, name, start=True), [])[0]
            return _finished(0, f"{reply['name']}\n", "")
        if ns.command == "create":
            reply = sup._dispatch(create_message(ns, ns.name, start=False), [])[0]
            return _finished(0, f"{reply['name']}\n", "")
        if ns.command == "start":
            for name in ns.names:
                sup._dispatch({"op": "start", "name": name}, [])
            return _finished(0, "", "")
        raise ValueError(f"{ns.command!r} is not run by the supervisor")
    finally:
        for fd in fds:
            if fd not in taken:
                os.close(fd)


def _finished(code: int, stdout: str, stderr: str) -> Reply:
    return {"ok": True, "exit": code, "stdout": stdout, "stderr": stderr}, [], None
