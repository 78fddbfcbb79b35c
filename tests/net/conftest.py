"""Fixtures for the network layer: real kernel, root, one host root + tag per session.

Traffic goes only to loopback and to namespaces these tests create; test subnets
are random /24s of 10.213.0.0/16 (and fd00:213::/32), checked against the host.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stockade.interfaces import BackendConfig

from .nethelpers import Netns, ip_links, nft_tables


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (netlink, nftables, network namespaces)"
    try:
        ctypes.CDLL("libnftables.so.1")
    except OSError:
        return "libnftables.so.1 missing (Debian package libnftables1)"
    if not os.path.exists("/proc/self/ns/net"):
        return "no network namespaces"
    return None


@pytest.fixture(scope="session")
def net_config() -> Iterator[BackendConfig]:
    why = _why_not()
    if why:
        pytest.skip(why)
    from stockade_linux_ns.net import Networks
    from stockade_linux_ns.net.names import link_prefix, table_name

    root = Path(tempfile.mkdtemp(prefix="stockade-test-net-"))
    tag = f"tn{uuid.uuid4().hex[:8]}"
    config = BackendConfig(root=root, run_dir=root / "run", host_tag=tag)
    try:
        yield config
    finally:
        nets = Networks(config)
        nets.gc([])
        for info in nets.list():
            nets.delete(info.name)
        nets.gc([])
        shutil.rmtree(root, ignore_errors=True)
        left = ip_links(link_prefix(tag)) + [t for t in nft_tables() if t == table_name(tag)]
        assert not left, f"network tests left host resources behind: {left}"


@pytest.fixture
def netns() -> Iterator[Callable[[], Netns]]:
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()
