"""The handlers of the `stockade` verbs. Each returns the process exit code."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import NotFound, SpecError, StockadeError
from ..host import Host, Instance
from ..interfaces import Stdio
from ..spec import InstanceSpec


def dispatch(ns: argparse.Namespace) -> int:
    name = ALIASES.get(ns.command, ns.command)
    handler = HANDLERS.get(name)
    if handler is None:
        from . import conformance_cmd, migrate_cmds

        handler = {**migrate_cmds.HANDLERS, "conformance": conformance_cmd.cmd_conformance}[name]
    host = Host(ns.root) if ns.root else Host()
    return handler(ns, host)


# --- spec -------------------------------------------------------------------------------------


def _spec(ns: argparse.Namespace, host: Host, name: str) -> InstanceSpec:
    from .thin import spec_dict

    return host.make_spec(spec_dict(ns, name))


def _stdio(interactive: bool, terminal: bool) -> tuple[Stdio, list[int]]:
    if terminal:
        return Stdio(terminal=True), []
    if interactive:
        return Stdio(), []
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return Stdio(stdin=null), [null]


# --- lifecycle --------------------------------------------------------------------------------


def run_in_process(ns: argparse.Namespace, name: str) -> int:
    """`run` without the supervisor: this process is the instance's parent and waits."""
    host = Host(ns.root) if ns.root else Host()
    spec = _spec(ns, host, name)
    stdio, close = _stdio(ns.interactive, ns.tty)
    try:
        inst = host.create(spec, stdio=stdio, owner="cli")
    finally:
        for fd in close:
            os.close(fd)
    return _attach(inst, remove=ns.rm)


def _attach(inst: Instance, remove: bool) -> int:
    """Start the instance and stay with it: forward signals, relay its terminal, wait, clean up."""
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(StockadeError, ProcessLookupError):
            inst.kill(signum)

    old = {s: signal.signal(s, forward) for s in forwarded}
    try:
        inst.start()
        if inst.pty_master is not None:
            from .tty import proxy

            proxy(inst.pty_master)
        return inst.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if remove:
            inst.delete(force=True)


def cmd_exec(ns: argparse.Namespace, host: Host) -> int:
    if not ns.cmd:
        raise StockadeError("exec needs a command: stockade exec NAME -- COMMAND")
    inst = host.get(ns.name)
    env = dict(e.partition("=")[::2] for e in ns.env)
    user = None
    if ns.user:
        u, _, g = ns.user.partition(":")
        if not u.isdigit() or (g and not g.isdigit()):
            raise SpecError([("--user", f"{ns.user!r} must be UID[:GID] (numbers)")])
        user = (int(u), int(g or u))
    stdio, close = _stdio(ns.interactive, ns.tty)
    try:
        sp = inst.spawn(ns.cmd, env=env, cwd=ns.workdir, user=user, stdio=stdio)
    finally:
        for fd in close:
            os.close(fd)
    from ..host import _waitpid, shell_status

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sp.pid, signum)

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    if sp.pty_master is not None:
        from .tty import proxy

        proxy(sp.pty_master)
    return shell_status(_waitpid(sp.pid, None))


def cmd_stop(ns: argparse.Namespace, host: Host) -> int:
    for name in ns.names:
        host.get(name).stop(timeout=ns.time)
    return 0


def cmd_kill(ns: argparse.Namespace, host: Host) -> int:
    sig = _signal(ns.signal)
    for name in ns.names:
        host.get(name).kill(sig)
    return 0


def _signal(text: str) -> int:
    t = text.upper().removeprefix("SIG")
    if t.isdigit():
        return int(t)
    try:
        return int(signal.Signals[f"SIG{t}"])
    except KeyError:
        raise SpecError([("--signal", f"{text!r} is not a signal name or number")]) from None


def cmd_delete(ns: argparse.Namespace, host: Host) -> int:
    code = 0
    for name in ns.names:
        try:
            host.get(name).delete(force=ns.force)
        except NotFound as e:
            print(f"stockade: error: {e}", file=sys.stderr)
            code = 1
    return code


def cmd_pause(ns: argparse.Namespace, host: Host) -> int:
    for name in ns.names:
        host.get(name).pause()
    return 0


def cmd_resume(ns: argparse.Namespace, host: Host) -> int:
    for name in ns.names:
        host.get(name).resume()
    return 0


def cmd_wait(ns: argparse.Namespace, host: Host) -> int:
    for name in ns.names:
        print(host.get(name).wait())
    return 0


# --- information ------------------------------------------------------------------------------


def cmd_list(ns: argparse.Namespace, host: Host) -> int:
    insts = host.instances()
    if ns.quiet:
        for i in insts:
            print(i.name)
        return 0
    if ns.format == "json":
        print(json.dumps([_summary(i) for i in insts], indent=1))
        return 0
    from .tables import instance_table

    instance_table(insts)
    return 0


def _summary(i: Instance) -> dict[str, Any]:
    st = i.state
    return {
        "name": i.name,
        "id": i.id,
        "status": i.status,
        "exit_status": st.exit_status,
        "pid": i.pid,
        "backends": st.backends,
        "created_at": st.created_at,
        "resources": st.spec.get("resources", {}),
    }


def cmd_inspect(ns: argparse.Namespace, host: Host) -> int:
    print(json.dumps(host.get(ns.name).state.to_json(), indent=1, sort_keys=True))
    return 0


def cmd_stats(ns: argparse.Namespace, host: Host) -> int:
    insts = [host.get(n) for n in ns.names] if ns.names else host.instances()
    stats = [i.stats() for i in insts]
    if ns.format == "json":
        from dataclasses import asdict

        print(json.dumps([asdict(s) for s in stats], indent=1))
        return 0
    from .tables import stats_table

    stats_table(stats)
    return 0


def cmd_update(ns: argparse.Namespace, host: Host) -> int:
    from .specargs import _num

    res: dict[str, Any] = {
        k: _num(v)
        for k in ("memory", "memory_swap", "cpus", "cpu_weight", "cpuset_cpus", "pids")
        if (v := getattr(ns, k)) is not None
    }
    if ns.disk is not None:  # "none" removes the root's disk quota
        res["disk"] = None if ns.disk.lower() == "none" else _num(ns.disk)
    io = {
        k: _num(v)
        for k in ("read_bps", "write_bps", "read_iops", "write_iops")
        if (v := getattr(ns, f"io_{k}")) is not None
    }
    if io:
        res["io"] = io
    if not res:
        raise StockadeError("update needs at least one limit, e.g. --memory 128M")
    host.get(ns.name).update(res)
    return 0


def cmd_logs(ns: argparse.Namespace, host: Host) -> int:
    inst = host.get(ns.name)
    try:
        f = open(inst.log_path, "rb")  # noqa: SIM115 - followed below
    except FileNotFoundError:
        raise NotFound(f"instance {ns.name!r} has no log (only detached instances keep one)") from None
    with f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                continue
            if not ns.follow or inst.refresh().status not in ("created", "running", "paused"):
                break
            time.sleep(0.1)
    return 0


def cmd_snapshot(ns: argparse.Namespace, host: Host) -> int:
    inst = host.get(ns.name)
    if ns.snapshot is None:
        from .tables import snapshot_table

        snapshot_table(inst.snapshots())
    elif ns.delete:
        inst.delete_snapshot(ns.snapshot)
    else:
        inst.snapshot(ns.snapshot)
    return 0


def cmd_rollback(ns: argparse.Namespace, host: Host) -> int:
    host.get(ns.name).rollback(ns.snapshot)
    return 0


def cmd_image(ns: argparse.Namespace, host: Host) -> int:
    if ns.image_command == "list":
        for name in host.images(ns.storage):
            print(name)
    elif ns.image_command == "import":
        host.import_image(ns.image, ns.directory, ns.storage)
    else:
        from typing import cast

        from ..interfaces import StorageBackend

        cast(StorageBackend, host.choose("storage", ns.storage)).remove_image(ns.image)
    return 0


def cmd_network(ns: argparse.Namespace, host: Host) -> int:
    nets = host.networks()
    verb = {"rm": "delete"}.get(ns.network_command, ns.network_command)
    if verb == "create":
        info = nets.create(ns.name, ns.subnet, isolated=ns.isolated, mtu=ns.mtu)
        print(info.name)
    elif verb == "list":
        from .tables import network_table

        network_table(nets.list())
    elif verb == "inspect":
        print(json.dumps(nets.inspect(ns.name).to_dict(), indent=1, sort_keys=True))
    else:
        nets.delete(ns.name)
    return 0


def cmd_backends(ns: argparse.Namespace, host: Host) -> int:
    from .tables import backends_table

    backends_table(host.backends())
    return 0


def cmd_gc(ns: argparse.Namespace, host: Host) -> int:
    removed = host.gc()
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print("nothing to remove")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, Host], int]] = {
    "exec": cmd_exec,
    "stop": cmd_stop,
    "kill": cmd_kill,
    "delete": cmd_delete,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "wait": cmd_wait,
    "list": cmd_list,
    "inspect": cmd_inspect,
    "stats": cmd_stats,
    "update": cmd_update,
    "logs": cmd_logs,
    "snapshot": cmd_snapshot,
    "rollback": cmd_rollback,
    "image": cmd_image,
    "backends": cmd_backends,
    "gc": cmd_gc,
    "network": cmd_network,
}
ALIASES = {"ls": "list", "ps": "list", "rm": "delete"}
