"""The `stockade` command's entry point.

``run``, ``create`` and ``start`` are handed whole to the host root's warm supervisor
(argv, cwd and this process's stdio; cli/forward.py), which parses and runs them: this
process then imports next to nothing (no argparse, re or json: ~15 ms of a ~25 ms budget).
Every other verb, ``--debug`` and ``STOCKADE_SUPERVISOR=0`` go to the full CLI (main.py).
"""

from __future__ import annotations

import os
import sys

FORWARDED = frozenset({"run", "create", "start"})
_ROOT = "--root"


def command_word(flags: list[str]) -> str | None:
    """The subcommand named in ``flags`` (None if there is none or help is asked for)."""
    skip = False
    for arg in flags:
        if skip:
            skip = False
        elif len(arg) >= 3 and _ROOT.startswith(arg):  # argparse takes "--ro" too
            skip = True
        elif arg in ("-h", "--help"):
            return None
        elif not arg.startswith("-"):
            return arg
    return None


def forwardable_root(argv: list[str]) -> str | None:
    """The ``--root`` of a command line the supervisor can take whole ("" for the default
    root), or None when the full CLI must parse it here."""
    flags = argv[: argv.index("--")] if "--" in argv else argv
    root = ""
    i = 0
    while i < len(flags):
        arg = flags[i]
        if not arg.startswith("-"):
            return root if arg in FORWARDED and "-h" not in flags and "--help" not in flags else None
        name, eq, value = arg.partition("=")
        if len(name) >= 3 and _ROOT.startswith(name):
            if not eq:
                i += 1
                if i == len(flags):
                    return None
                value = flags[i]
            root = value
        else:
            return None  # --debug, -h, or anything the full parser should judge
        i += 1
    return None


def main() -> None:
    argv = sys.argv[1:]
    if os.environ.get("STOCKADE_SUPERVISOR", "1") != "0":
        root = forwardable_root(argv)
        if root is not None:
            from .forward import forward

            exit_now(forward(root, argv))
    from .main import main as full

    full()


def exit_now(code: int) -> None:
    """Exit without interpreter teardown (a few ms): nothing registered with atexit needs
    to run. A stream the caller closed (``2>&-``) is None here."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:  # noqa: SIM105 (contextlib is ~1 ms this path does without)
                stream.flush()
            except OSError:
                pass
    os._exit(code)
