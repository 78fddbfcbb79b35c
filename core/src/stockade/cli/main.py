"""`stockade`: argument parsing, dispatch and the one-line error contract.

argparse, not click/typer: the run path has a time budget (DESIGN.md, Performance)
and rich is imported only by the commands that draw tables.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from ..errors import StockadeError
from .specargs import add_spec_flags

EXIT_INTERNAL = 125  # like podman: the runtime itself failed


def _terminal_columns() -> int:
    """shutil.get_terminal_size's answer, without importing shutil (bz2, lzma, ...: ~3 ms)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    # argparse makes one of these for every argument declared (to check its metavar),
    # and each would import shutil for the terminal width.
    def __init__(
        self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _terminal_columns() - 2 if width is None else width
        )


@functools.cache  # parse_args leaves a parser as it was: the supervisor builds each once
def build_parser(remainder: bool = True, only_run: bool = False) -> argparse.ArgumentParser:
    """``remainder``: the instance command is whatever follows the positionals (no ``--`` given).

    ``only_run``: declare the ``run`` subcommand alone. argparse formats every argument
    as it is added, so declaring all the others costs ~20 ms, more than a warm run.
    """
    cmd_nargs = argparse.REMAINDER if remainder else "*"
    p = argparse.ArgumentParser(
        prog="stockade",
        description="OS-level virtualization: isolated instances on Linux and FreeBSD.",
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--root",
        default=os.environ.get("STOCKADE_ROOT"),
        help="host root (default /var/lib/stockade; runtime state in /run/stockade)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, aliases=list(aliases), description=help, formatter_class=_Formatter
        )

    c = cmd("run", "create and start an instance, attached unless -d")
    add_spec_flags(c)
    c.add_argument("--name")
    c.add_argument("--rm", action="store_true", help="delete the instance when it exits")
    c.add_argument("-d", "--detach", action="store_true", help="run in the background")
    c.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    c.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    c.add_argument("cmd", nargs=cmd_nargs, metavar="-- COMMAND")
    if only_run:
        return p

    c = cmd("create", "create an instance (its process waits for start)")
    add_spec_flags(c)
    c.add_argument("name")
    c.add_argument("cmd", nargs=cmd_nargs, metavar="-- COMMAND")

    c = cmd("start", "start created or stopped instances")
    c.add_argument("names", nargs="+", metavar="NAME")

    c = cmd("exec", "run a command inside a running instance")
    c.add_argument("-t", "--tty", action="store_true")
    c.add_argument("-i", "--interactive", action="store_true")
    c.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE")
    c.add_argument("-w", "--workdir")
    c.add_argument("-u", "--user", metavar="UID[:GID]")
    c.add_argument("name")
    c.add_argument("cmd", nargs=cmd_nargs, metavar="-- COMMAND")

    c = cmd("list", "list instances", aliases=("ls", "ps"))
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.add_argument("-q", "--quiet", action="store_true", help="names only")

    c = cmd("stop", "stop instances: SIGTERM, then SIGKILL after a timeout")
    c.add_argument("-t", "--time", type=float, metavar="SECONDS", help="default: the spec's stop_timeout")
    c.add_argument("names", nargs="+", metavar="NAME")

    c = cmd("kill", "send a signal to an instance's first process")
    c.add_argument("-s", "--signal", default="TERM")
    c.add_argument("names", nargs="+", metavar="NAME")

    c = cmd("delete", "delete instances", aliases=("rm",))
    c.add_argument("-f", "--force", action="store_true", help="kill running instances first")
    c.add_argument("names", nargs="+", metavar="NAME")

    for verb, text in (("pause", "freeze every process of instances"), ("resume", "thaw paused instances")):
        c = cmd(verb, text)
        c.add_argument("names", nargs="+", metavar="NAME")

    c = cmd("wait", "wait for instances to stop; print their exit statuses")
    c.add_argument("names", nargs="+", metavar="NAME")

    c = cmd("stats", "memory, CPU, pids and disk in use against the limits")
    c.add_argument("--format", choices=("table", "json"), default="table")
    c.add_argument("names", nargs="*", metavar="NAME")

    c = cmd("update", "change an instance's limits while it runs")
    c.add_argument("name")
    for flag in ("--memory", "--memory-swap", "--cpus", "--cpu-weight", "--cpuset-cpus", "--pids"):
        c.add_argument(flag)
    c.add_argument("--disk", metavar="SIZE|none", help="disk quota of the root file system")
    for d in ("read", "write"):
        c.add_argument(f"--io-{d}-bps", metavar="SIZE", help=f"{d} bytes per second on the root's device")
        c.add_argument(f"--io-{d}-iops", metavar="N", help=f"{d} operations per second")

    c = cmd("logs", "output of a detached instance")
    c.add_argument("-f", "--follow", action="store_true")
    c.add_argument("name")

    c = cmd("inspect", "an instance's state as JSON")
    c.add_argument("name")

    c = cmd("snapshot", "snapshot an instance's root file system")
    c.add_argument("name")
    c.add_argument("snapshot", nargs="?", help="name of the snapshot (omit to list them)")
    c.add_argument("--delete", action="store_true", help="delete the named snapshot")

    c = cmd("rollback", "roll a stopped instance's root file system back to a snapshot")
    c.add_argument("name")
    c.add_argument("snapshot")

    c = cmd("image", "manage images")
    isub = c.add_subparsers(dest="image_command", metavar="COMMAND", required=True)
    ic = isub.add_parser("list", help="list images")
    ic.add_argument("--storage")
    ic = isub.add_parser("import", help="import a directory tree as an image")
    ic.add_argument("image")
    ic.add_argument("directory")
    ic.add_argument("--storage")
    ic = isub.add_parser("rm", help="remove an image")
    ic.add_argument("image")
    ic.add_argument("--storage")

    from .migrate_cmds import add_parsers

    add_parsers(sub)

    from .conformance_cmd import add_arguments

    add_arguments(cmd("conformance", "run the conformance suite; write the verified feature matrix"))

    c = cmd("network", "manage named networks (bridged, with their own subnets)")
    nsub = c.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    nc = nsub.add_parser("create", help="create a network")
    nc.add_argument("name")
    nc.add_argument(
        "--subnet",
        action="append",
        default=[],
        metavar="CIDR",
        help="IPv4 and/or IPv6 subnet (repeatable; default: allocated)",
    )
    nc.add_argument("--isolated", action="store_true", help="instances on it cannot reach each other")
    nc.add_argument("--mtu", type=int)
    nsub.add_parser("list", help="list networks")
    for verb, text in (
        ("inspect", "a network, its instances and addresses, as JSON"),
        ("delete", "delete a network (refused while instances use it)"),
    ):
        nc = nsub.add_parser(verb, help=text, aliases=["rm"] if verb == "delete" else [])
        nc.add_argument("name")

    cmd("backends", "installed backends, whether each can run here, and why not")
    cmd("gc", "finish interrupted commands and remove leftovers of this host root")
    return p


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """Everything after the first ``--`` is the instance's command, never stockade's flags."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def parse(args_in: list[str]) -> argparse.Namespace:
    """The command line as a namespace; argparse exits (SystemExit) on a usage error."""
    from .entry import command_word

    flags, command = _split_command(args_in)
    only_run = command_word(flags) == "run"
    ns = build_parser(remainder=command is None, only_run=only_run).parse_args(flags)
    if command is None and getattr(ns, "cmd", None) and ns.cmd[0].startswith("-"):
        # `create NAME --spec F`: options after a positional are stockade's, not a
        # command's; a command with options of its own then needs `--`
        ns = build_parser(remainder=False, only_run=only_run).parse_args(flags)
    if command is not None:
        if not hasattr(ns, "cmd"):
            raise StockadeError(f"{ns.command!r} takes no command after '--'")
        ns.cmd = command
    return ns


def main(argv: list[str] | None = None) -> None:
    args_in = sys.argv[1:] if argv is None else argv
    debug = "--debug" in _split_command(args_in)[0]
    try:
        ns = parse(args_in)
        from .thin import HANDLERS as THIN

        if ns.command in THIN:
            code = THIN[ns.command](ns)
        else:
            from . import commands

            code = commands.dispatch(ns)
    except StockadeError as e:
        if debug:
            raise
        print(f"stockade: error: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 141  # what a shell reports for SIGPIPE: quiet, but not success
    except Exception as e:
        if debug:
            raise
        print(
            f"stockade: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        code = EXIT_INTERNAL
    if argv is not None:
        sys.exit(code)
    from .entry import exit_now

    exit_now(code)
