"""CLI handlers: ``checkpoint``, ``restore``, ``migrate`` and ``migrate-receive``.

Wired into cli/main.py by ``add_parsers(sub)`` and dispatched by ``HANDLERS[name](ns, host)``.
A target started over SSH (or by the tests) runs ``stockade --root R migrate-receive --fd N``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import StockadeError

if TYPE_CHECKING:
    from ..host import Host


def add_parsers(sub: Any) -> None:
    c = sub.add_parser(
        "checkpoint",
        help="checkpoint a running instance to a directory",
        description="checkpoint a running instance (processes + file system) to DIR",
    )
    c.add_argument("name")
    c.add_argument("dir", nargs="?", help="where the checkpoint goes (not needed with --check)")
    c.add_argument("--leave-running", action="store_true", help="keep the instance running")
    c.add_argument("--check", action="store_true", help="only say whether it can be checkpointed")

    c = sub.add_parser(
        "restore",
        help="restore an instance from a checkpoint directory",
        description="restore an instance from a checkpoint directory",
    )
    c.add_argument("dir")
    c.add_argument("--name", help="restore under a new name")

    c = sub.add_parser(
        "migrate",
        help="move a running instance to another stockade host",
        description="move a running instance to another host (ssh://[user@]host[/root], "
        "unix:/path, tcp:HOST:PORT)",
    )
    c.add_argument("name")
    c.add_argument("--to", required=True, metavar="TARGET")
    c.add_argument("--cold", action="store_true", help="stop, move storage, start (no process state)")
    c.add_argument(
        "--method",
        choices=["auto", "pre-copy", "post-copy", "stop-and-copy"],
        default="auto",
        help="live: how memory moves (auto: pre-copy with soft-dirty, else post-copy with "
        "userfaultfd, else stop-and-copy)",
    )
    c.add_argument("--stop-timeout", type=float, help="cold: seconds before SIGKILL")
    c.add_argument("--no-progress", action="store_true")

    c = sub.add_parser(
        "migrate-receive",
        help="receive one migrating instance (target side)",
        description="receive one instance on stdin/stdout, an fd, or a listening socket",
    )
    c.add_argument("--fd", type=int, help="a connected socket inherited as this fd")
    c.add_argument("--listen", metavar="unix:/path|tcp:HOST:PORT")


def cmd_checkpoint(ns: argparse.Namespace, host: Host) -> int:
    from .. import checkpointing

    inst = host.get(ns.name)
    if ns.check:
        problems = checkpointing.preflight(inst)
        for p in problems:
            print(p)
        if not problems:
            print(f"{ns.name}: can be checkpointed")
        return 1 if problems else 0
    if not ns.dir:
        raise StockadeError("checkpoint needs a directory: stockade checkpoint NAME DIR (or --check)")
    r = checkpointing.checkpoint(inst, ns.dir, leave_running=ns.leave_running)
    print(
        f"checkpointed {ns.name} to {r.directory}: frozen {r.freeze_s * 1000:.0f} ms, "
        f"{r.images_bytes / 2**20:.1f} MiB images, {r.storage_bytes / 2**20:.1f} MiB file system "
        f"({r.storage_format})"
    )
    return 0


def cmd_restore(ns: argparse.Namespace, host: Host) -> int:
    if os.environ.get("STOCKADE_SUPERVISOR", "1") == "0":
        from .. import checkpointing

        inst = checkpointing.restore(host, ns.dir, name=ns.name)
        name, pid = inst.name, inst.pid
    else:
        # The supervisor restores it and stays its parent: the exit status is recorded.
        from ..supervisor import request

        reply = request(host, {"op": "restore", "dir": os.path.abspath(ns.dir), "name": ns.name})
        name, pid = reply["name"], reply["pid"]
    print(f"restored {name} (pid {pid})")
    return 0


def cmd_migrate(ns: argparse.Namespace, host: Host) -> int:
    from .. import migrate

    inst = host.get(ns.name)
    chan, _ = migrate.open_target(ns.to)
    try:
        r = migrate.migrate(
            inst,
            chan,
            mode="cold" if ns.cold else "live",
            method=ns.method,
            progress=not ns.no_progress and sys.stderr.isatty(),
            stop_timeout=ns.stop_timeout,
        )
    finally:
        chan.close()
    print(r.summary())
    if r.mode == "live":
        print(f"method {r.method}: {r.why_method}")
    return 0


def cmd_migrate_receive(ns: argparse.Namespace, host: Host) -> int:
    import socket

    from .. import migrate

    if ns.fd is not None:
        chan = migrate.Channel.of_socket(socket.socket(fileno=ns.fd))
    elif ns.listen:
        if ns.listen.startswith("unix:"):
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(ns.listen[5:])
        else:
            h, _, port = ns.listen.removeprefix("tcp:").rpartition(":")
            srv = socket.create_server((h, int(port)))
        srv.listen(1)
        conn, _ = srv.accept()
        srv.close()
        chan = migrate.Channel.of_socket(conn)
    else:
        chan = migrate.Channel(os.fdopen(0, "rb"), os.fdopen(1, "wb"))
    try:
        inst = migrate.serve(host, chan)
    finally:
        chan.close()
    print(f"received {inst.name} (pid {inst.pid})", file=sys.stderr)
    # The restored tree is our child: stay as its reaper while it runs, like `run`.
    return inst.wait() if os.environ.get("STOCKADE_RECEIVE_WAIT", "1") == "1" else 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Host], int]] = {
    "checkpoint": cmd_checkpoint,
    "restore": cmd_restore,
    "migrate": cmd_migrate,
    "migrate-receive": cmd_migrate_receive,
}
