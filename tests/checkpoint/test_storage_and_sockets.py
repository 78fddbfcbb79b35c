"""Checkpoint/restore on the ``dir`` storage, and of instances holding TCP sockets.

TCP traffic here stays on the loopback of the instance's own network namespace (network
mode ``loopback``: server and client both run inside the instance), or between two
instances the test made, on a bridge network of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest_helpers import start_counter, start_instance, wait_counter_past
from stockade import Host, checkpointing, migrate
from stockade_linux_ns.checkpoint import criu
from stockade_linux_ns.checkpoint.inventory import MountInfo, external_mounts

pytestmark = pytest.mark.timeout(120)

LOOPBACK = {"network": {"mode": "loopback"}}


def _mount(mid: int, point: str, root: str, dev: str = "254:0", fstype: str = "ext4") -> MountInfo:
    return MountInfo(mid, 1, dev, root, point, fstype, "/dev/vda")


def test_external_mounts_on_a_plain_directory_root() -> None:
    """dir storage: the root is a bind of a host directory, on the host's own file system.
    Binds of host files from that file system but outside the root are external."""
    base = "/tmp/r/storage/dir/instances/abc/rootfs"
    mounts = [
        _mount(1, "/", base),
        _mount(2, "/proc", "/", "0:40", "proc"),
        _mount(3, "/proc/sys", "/sys", "0:40", "proc"),  # a part of a proc mounted whole
        _mount(4, "/etc/hosts", "/tmp/r/run/instances/c/hosts"),  # host file, same device
        _mount(5, "/etc/hostname", "/tmp/r/run/instances/c/hostname"),
        _mount(6, "/data", base + "/srv/data"),  # a part of the root itself
        _mount(7, "/proc/keys", "/null", "0:6", "devtmpfs"),  # masked with the host's /dev/null
        _mount(8, "/shared", "/some/dir", "0:50", "tmpfs"),  # a part of a host tmpfs
        _mount(9, "/rootfs2", base + "2"),  # a sibling whose name starts like the root
    ]
    external = {"/etc/hosts", "/etc/hostname", "/proc/keys", "/shared", "/rootfs2"}
    assert set(external_mounts(mounts)) == external
    # overlay: the root is a file system of its own; host binds are on other devices
    over = [_mount(1, "/", "/", "0:90", "overlay"), _mount(2, "/etc/hosts", "/tmp/r/run/c/hosts")]
    assert set(external_mounts(over)) == {"/etc/hosts"}


def test_round_trip_on_dir_storage(root_dir: Path, host: Any, tmp_path: Path) -> None:
    """The instance's root is a plain directory of the host's file system; its /etc/hosts,
    /etc/hostname are bind mounts of host files on that same file system."""
    h = Host(root_dir, storage="dir")
    inst = start_counter(h, "dctr", tmp_path)
    assert inst.state.backends["storage"] == "dir"
    before = wait_counter_past(inst, 10)
    assert checkpointing.preflight(inst) == []
    checkpointing.checkpoint(inst, tmp_path / "ck")
    mounts = json.loads((tmp_path / "ck" / "images" / "stockade-criu.json").read_text())["mounts"]
    assert {"run:hosts", "run:hostname"} <= set(mounts.values()), mounts
    inst.delete()
    back = checkpointing.restore(h, tmp_path / "ck")
    assert back.status == "running" and back.state.backends["storage"] == "dir"
    # A restart would count from 1 again; a restore continues from memory.
    assert wait_counter_past(back, before) > before
    assert back.run(["cat", "/etc/hostname"]).stdout.strip() == b"dctr"
    # and once more: a restored instance on dir storage can be checkpointed again
    checkpointing.checkpoint(back, tmp_path / "ck2", leave_running=True)
    again = checkpointing.restore(h, tmp_path / "ck2", name="dctr2")
    assert wait_counter_past(again, before) > before


def test_live_migration_on_dir_storage(root_dir: Path, host: Any, remote_target: Any, tmp_path: Path) -> None:
    from stockade import migrate

    inst = start_counter(Host(root_dir, storage="dir"), "dmig", tmp_path)
    before = wait_counter_past(inst, 10)
    target = remote_target()
    rep = migrate.migrate(inst, migrate.Channel.of_socket(target.sock), mode="live", method="stop-and-copy")
    assert rep.method == "stop-and-copy", rep
    assert host.instances() == []  # the source is gone
    moved = Host(target.root).get("dmig")
    assert moved.status == "running" and moved.state.backends["storage"] == "dir"
    assert wait_counter_past(moved, before) > before


# --- TCP ------------------------------------------------------------------------------------

PORT = 5000  # inside the instance's own network namespace
# a TCP listener is up on PORT (any address; /proc/net/tcp{,6} state 0A)
LISTENING = f"grep -qs ':{PORT:04X} [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6"
WAIT_LISTEN = f"until {LISTENING}; do sleep 0.05; done"
# The server keeps its stdin open (busybox nc ends at EOF on it) and writes what it gets to
# /tmp/recv; the client sends 1, 2, 3, ... one line every 20 ms over one connection.
TCP_PAIR = (
    f"sleep 1000000 | nc -l -p {PORT} > /tmp/recv & {WAIT_LISTEN}; "
    f"i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done | nc 127.0.0.1 {PORT}"
)


def _need(kind: str) -> None:
    why = criu.socket_problem(kind)
    if why:
        pytest.skip(why)


def _received(inst: Any) -> list[int]:
    # the server's shell may not have made /tmp/recv yet when the instance has just started
    r = inst.run(["sh", "-c", "test ! -e /tmp/recv || cat /tmp/recv"])
    assert r.exit_status == 0, r
    return [int(x) for x in r.stdout.split()]


def _wait_received(inst: Any, past: int, timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        got = _received(inst)
        if (got and got[-1] > past) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def _client_conn(inst: Any) -> tuple[str, str]:
    """(local, remote) address of the client's established connection to PORT."""
    r = inst.run(["cat", "/proc/net/tcp"])
    for line in r.stdout.decode().splitlines()[1:]:
        cols = line.split()
        if cols[2].endswith(f":{PORT:04X}") and cols[3] == "01":
            return cols[1], cols[2]
    raise AssertionError(f"no established connection to port {PORT}: {r.stdout!r}")


def test_tcp_connection_survives_checkpoint_restore(host: Any, tmp_path: Path) -> None:
    _need("established")
    inst = start_instance(host, "tcp", tmp_path, ["sh", "-c", TCP_PAIR], **LOOPBACK)
    got = _wait_received(inst, 20)
    assert got and got[-1] > 20, got
    conn = _client_conn(inst)
    checkpointing.checkpoint(inst, tmp_path / "ck")
    manifest = json.loads((tmp_path / "ck" / "images" / "stockade-criu.json").read_text())
    assert manifest["tcp_established"] >= 1, manifest  # dumped with TCP repair
    inst.delete()
    back = checkpointing.restore(host, tmp_path / "ck")
    after = _wait_received(back, got[-1] + 20)
    assert after[-1] > got[-1] + 20, (got[-1], after[-1:])
    # The same connection (same ports), and the stream lost, repeated or reordered nothing:
    # a new connection or a restarted client would start again at 1.
    assert _client_conn(back) == conn
    assert after == list(range(1, len(after) + 1)), after


def _start_listener(host: Any, name: str, tmp_path: Path) -> Any:
    """An instance listening on PORT (what arrives goes to /tmp/got) that counts in /tmp/c
    once the listener is up."""
    server = (
        f"sleep 1000000 | nc -l -p {PORT} > /tmp/got & {WAIT_LISTEN}; "
        "i=0; while true; do i=$((i+1)); echo $i > /tmp/c; sleep 0.02; done"
    )
    inst = start_instance(host, name, tmp_path, ["sh", "-c", server], **LOOPBACK)
    deadline = time.monotonic() + 10
    while inst.run(["test", "-s", "/tmp/c"]).exit_status != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return inst


def _assert_hello_arrives(inst: Any) -> None:
    """The listener takes a new connection (from inside the instance) and gets its bytes."""
    r = inst.run(["sh", "-c", f"echo hello | nc -w 5 127.0.0.1 {PORT}"])
    assert r.exit_status == 0, r
    deadline = time.monotonic() + 10
    while inst.run(["cat", "/tmp/got"]).stdout != b"hello\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inst.run(["cat", "/tmp/got"]).stdout == b"hello\n"


def test_listening_socket_survives_checkpoint_restore(host: Any, tmp_path: Path) -> None:
    """Listening sockets need no TCP repair; before CRIU 4.2 they failed to dump on Linux
    >= 6.16 (SO_PASSCRED/SO_PASSSEC, see docs/checkpoint.md)."""
    _need("listen")
    inst = _start_listener(host, "lsn", tmp_path)
    before = wait_counter_past(inst, 10)
    assert checkpointing.preflight(inst) == []
    checkpointing.checkpoint(inst, tmp_path / "ck")
    inst.delete()
    back = checkpointing.restore(host, tmp_path / "ck")
    assert wait_counter_past(back, before) > before
    # The restored listener takes a new connection (from inside the instance).
    _assert_hello_arrives(back)


def test_leave_running_keeps_the_network(host: Any, tmp_path: Path) -> None:
    """A dump that leaves the tree stopped (checkpoint --leave-running, migration) leaves its
    network namespace locked for a copy to take over (criu's nftables table drops every
    packet; CRIU < 3.19 cannot skip the lock, later ones lock where TCP is established).
    Resumed in place, the instance gets its network back."""
    _need("listen")
    inst = _start_listener(host, "net", tmp_path)
    before = wait_counter_past(inst, 5)
    checkpointing.checkpoint(inst, tmp_path / "ck", leave_running=True)
    assert wait_counter_past(inst, before) > before  # it runs on
    _assert_hello_arrives(inst)


def test_socket_probe_names_the_cause() -> None:
    """The probe's answer is criu's own first error, or '' (cached per binary)."""
    for kind in ("listen", "established"):
        why = criu.socket_problem(kind)
        assert why == "" or "cannot dump" in why, why
        assert criu.socket_problem(kind) == why
    with pytest.raises(ValueError, match="not 'listen'"):
        criu.socket_problem("udp")


# --- TCP to another instance, across a live migration --------------------------------------

FABRIC = "10.233.71.0/24"  # TEST-only subnet; both hosts' bridges share it through a veth


def _stockade(root: Path, *args: str, netns_pid: int | None = None) -> str:
    cmd = [sys.executable, "-m", "stockade", "--root", str(root), *args]
    if netns_pid is not None:
        cmd = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, (cmd, r.stdout, r.stderr)
    return r.stdout


def _bridge(root: Path, netns_pid: int | None = None) -> str:
    return str(json.loads(_stockade(root, "network", "inspect", "fab", netns_pid=netns_pid))["bridge"])


def test_tcp_connection_to_another_instance_survives_live_migration(
    host: Any, remote_target: Any, tmp_path: Path
) -> None:
    """Instance A streams 1, 2, 3, ... over TCP to instance B on one network; A migrates
    live to a host in another network namespace whose bridge is on the same L2 segment (a
    veth joins the two hosts' bridges, as a data-centre fabric would). A keeps its address
    and MAC there, so B's stream goes on over the same connection: nothing lost, repeated
    or restarted. Traffic stays between the test's own namespaces."""
    _need("established")
    target = remote_target()
    tpid = target.proc.pid  # migrate-receive, in the target host's network namespace
    _stockade(host.root, "network", "create", "fab", "--subnet", FABRIC)
    _stockade(target.root, "network", "create", "fab", "--subnet", FABRIC, netns_pid=tpid)
    src_br, dst_br = _bridge(host.root), _bridge(target.root, tpid)
    link = f"stkfab{os.getpid() % 100000}"
    subprocess.run(
        ["ip", "link", "add", link, "type", "veth", "peer", "name", "stkfab-peer", "netns", str(tpid)],
        check=True,
    )
    try:
        subprocess.run(["ip", "link", "set", link, *up_on(src_br)], check=True)
        subprocess.run(
            ["nsenter", f"--net=/proc/{tpid}/ns/net", "ip", "link", "set", "stkfab-peer", *up_on(dst_br)],
            check=True,
        )
        net = {"network": {"mode": "bridge", "network": "fab"}}
        server = f"sleep 1000000 | nc -l -p {PORT} > /tmp/recv"
        b = start_instance(host, "peer", tmp_path, ["sh", "-c", server], **net)
        b_ip = b.state.data["network"]["ipv4"]
        assert b.run(["sh", "-c", WAIT_LISTEN], timeout=10).exit_status == 0
        client = f"i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done | nc {b_ip} {PORT}"
        a = start_instance(host, "talker", tmp_path, ["sh", "-c", client], **net)
        a_net = dict(a.state.data["network"])
        got = _wait_received(b, 20)
        assert got and got[-1] > 20, got
        rep = migrate.migrate(a, migrate.Channel.of_socket(target.sock), mode="live")
        moved = Host(target.root).get("talker")
        assert moved.status == "running"
        assert {k: moved.state.data["network"][k] for k in ("ipv4", "mac")} == {
            k: a_net[k] for k in ("ipv4", "mac")
        }
        after = _wait_received(b, got[-1] + 50, timeout=20)
        assert after[-1] > got[-1] + 50, (rep.method, got[-1], after[-1:])
        # one connection throughout: a new one would have started again at 1
        assert after == list(range(1, len(after) + 1)), after[:5]
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)
        # the target's network goes with its namespace; the source's is ours to remove
        for inst in host.instances():
            inst.delete(force=True)
        _stockade(host.root, "network", "delete", "fab")


def up_on(bridge: str) -> list[str]:
    return ["master", bridge, "up"]
