"""The isolated user space: its own file-system view and its own network."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from ..features import Feature
from .harness import sh
from .marks import requires
from .plugin import note
from .probing import probe_in_instance
from .subject import MARKER_PATH, Subject


class IsolationSuite:
    """Subclass with a ``stockade_backends`` fixture: file-system and network isolation."""

    @requires(Feature.FS_ISOLATION)
    def test_fs_isolation(self, stockade_subject: Subject) -> None:
        """Inside, / is the instance's root: its image is there, the host's files are not."""
        secret = stockade_subject.root / f"host-secret-{secrets.token_hex(4)}"
        secret.write_text("host\n")
        try:
            out = sh(
                stockade_subject,
                f"cat {MARKER_PATH}; test -e {secret} && echo HOST-FILE-VISIBLE; "
                "cd /../../..; echo cwd=$(pwd); ls /",
            )
        finally:
            secret.unlink()
        assert out.status == 0, f"exit {out.status}: {out.stderr!r}"
        assert stockade_subject.marker in out.stdout, f"the instance's / is not its image: {out.stdout!r}"
        assert "HOST-FILE-VISIBLE" not in out.stdout, f"the host's {secret} is visible inside"
        assert "cwd=/\n" in out.stdout, f"'..' leads out of the root: {out.stdout!r}"

    @requires(Feature.NETWORK_ISOLATION)
    @pytest.mark.parametrize("mode", ["loopback", "bridge"])
    def test_network_isolation(
        self, mode: str, request: pytest.FixtureRequest, stockade_beacons: Any
    ) -> None:
        """Nothing of the host's network is reachable or visible from an instance: with network
        mode loopback, and (where the backend has named networks) from a bridged instance:
        the host's addresses, another network's instance, the host's interfaces
        (stockade.testing.netcheck)."""
        import os

        subject: Subject = request.getfixturevalue("stockade_subject")
        if mode == "bridge":
            from .netcheck import check_bridge_isolation

            for n in check_bridge_isolation(subject, stockade_beacons):
                note(request, n)
            return
        run = probe_in_instance(subject, stockade_beacons, only=["foreign_network"])
        checks = ["foreign_network.host_loopback_tcp", "foreign_network.host_interfaces"]
        for c in checks:
            r = run.results.get(c)
            assert r is not None, f"the probe did not report {c}: {run.stderr[:200]!r}"
            assert r.forbidden, f"{c}: {r.verdict} ({r.detail})"
        host_ns = os.readlink("/proc/self/ns/net")
        assert run.facts.get("ns_net") != host_ns, "the instance is in the host's network namespace"
        note(
            request,
            "loopback: the host's 127.0.0.1 listener unreachable, its interfaces invisible, "
            "a network namespace of its own",
        )
