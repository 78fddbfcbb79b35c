"""Building the probe, its cache, its check map and parsing its output."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest
from stockade.features import Restriction
from stockade.testing.probe import (
    CHECKS,
    ProbeBuildError,
    ProbeOutputError,
    by_restriction,
    host_listener,
    parse_connects,
    parse_facts,
    parse_results,
    probe_binary,
)
from stockade.testing.probe import build as probe_build

from .probe_helpers import RunProbe, needs_root

DOCS = Path(__file__).parents[2] / "docs" / "probe.md"
PT_INTERP = 3


def has_interpreter(path: Path) -> bool:
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "expected a 64-bit ELF"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return PT_INTERP in types


def test_builds_a_static_binary_into_the_cache(tmp_path: Path) -> None:
    path = probe_binary(tmp_path)
    assert path.parent == tmp_path and path.name.startswith("probe-")
    assert os.access(path, os.X_OK)
    assert not has_interpreter(path), "the probe must not need a dynamic loader (no libc inside)"


def test_cache_is_reused_and_leaves_no_temporaries(tmp_path: Path) -> None:
    first = probe_binary(tmp_path)
    mtime = first.stat().st_mtime_ns
    second = probe_binary(tmp_path)
    assert second == first and second.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_cache_key_follows_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = probe_binary(tmp_path)
    changed = tmp_path / "probe.c"
    changed.write_text(probe_build.PROBE_SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(probe_build, "PROBE_SOURCE", changed)
    rebuilt = probe_binary(tmp_path)
    assert rebuilt != original and rebuilt.is_file()


def test_cache_dir_honours_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert probe_build.cache_dir() == tmp_path / "stockade" / "probe"


def test_no_compiler_says_which_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProbeBuildError, match=r"no C compiler.*gcc libc6-dev"):
        probe_binary(tmp_path / "cache")


def test_failed_compile_says_which_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    with pytest.raises(ProbeBuildError, match=r"cannot build.*gcc libc6-dev"):
        probe_binary(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_list_matches_the_check_map(probe: Path) -> None:
    listed = subprocess.run([probe, "--list"], capture_output=True, text=True, check=True)
    assert listed.stdout.split() == list(CHECKS)


def test_every_restriction_has_a_check() -> None:
    assert set(CHECKS.values()) == set(Restriction)


def test_docs_map_every_check_to_its_restriction() -> None:
    section = DOCS.read_text().split("## Checks and the restriction", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        cells = [c.strip().strip("`") for c in row.strip("|").split("|")]
        documented[cells[0]] = cells[1]
    assert documented == {check: r.value for check, r in CHECKS.items()}


SAMPLE = """\
busybox noise line
{"fact": "pid", "value": "1"}
{"check": "mount.tmpfs", "verdict": "forbidden", "errno": "EPERM", "detail": "mount failed"}
{"check": "ptrace.own_child", "verdict": "allowed", "errno": null, "detail": ""}

{"check": "kmod.finit_module", "verdict": "inconclusive", "errno": "ENOSYS", "detail": "x"}
"""


def test_parse_results_and_facts() -> None:
    results = parse_results(SAMPLE)
    assert list(results) == ["mount.tmpfs", "ptrace.own_child", "kmod.finit_module"]
    tmpfs = results["mount.tmpfs"]
    assert tmpfs.forbidden and tmpfs.errno == "EPERM" and tmpfs.restriction is Restriction.MOUNT
    assert results["ptrace.own_child"].allowed and results["ptrace.own_child"].errno is None
    assert parse_facts(SAMPLE) == {"pid": "1"}
    grouped = by_restriction(results)
    assert [r.check for r in grouped[Restriction.KMOD]] == ["kmod.finit_module"]


@pytest.mark.parametrize(
    "line",
    [
        '{"check": "mount.tmpfs", "verdict": "maybe", "errno": null, "detail": ""}',
        '{"check": "mount.tmpfs", "verdict": "allowed", "errno": 1, "detail": ""}',
        '{"check": "mount.tmpfs", "verdict": "allowed"',
    ],
)
def test_parse_rejects_malformed_records(line: str) -> None:
    with pytest.raises(ProbeOutputError):
        parse_results(line)


def test_connect_and_serve(probe: Path) -> None:
    """--connect reports each target's answer (the token read, refused, malformed) without
    waiting out its timeout; --serve answers with its token; the host's wildcard listener
    answers on loopback, v4 and v6."""
    import socket
    import time

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
    spare = socket.socket()
    spare.bind(("127.0.0.1", 0))
    serve_port = spare.getsockname()[1]
    spare.close()
    server = subprocess.Popen(
        [str(probe), "--serve", str(serve_port), "--serve-token", "peer-token"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert parse_facts(server.stdout.readline()) == {"serving": str(serve_port)}
        with host_listener("host-token") as port:
            refused = f"127.0.0.1:{closed.getsockname()[1]}"
            targets = [f"127.0.0.1:{port}", f"[::1]:{port}", refused, "nonsense", f"127.0.0.1:{serve_port}"]
            t0 = time.monotonic()
            out = subprocess.run(
                [str(probe), "--only", "-", "--connect-timeout", "3000"]
                + [x for t in targets for x in ("--connect", t)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            took = time.monotonic() - t0
    finally:
        server.kill()
        server.wait()
        closed.close()
    got = parse_connects(out)
    assert got[f"127.0.0.1:{port}"].connected and got[f"127.0.0.1:{port}"].read == "host-token"
    if os.path.exists("/proc/net/if_inet6"):
        assert got[f"[::1]:{port}"].read == "host-token"
    assert got[refused].errno == "ECONNREFUSED" and not got[refused].connected
    assert got["nonsense"].errno == "EINVAL"
    assert got[f"127.0.0.1:{serve_port}"].read == "peer-token"
    assert took < 2.5, took  # every target answered: none waited for the timeout
    assert "lo=127.0.0.1" in parse_facts(out)["net_ifaces"]


@needs_root
def test_runs_alone_in_an_empty_root(probe: Path, run_probe: RunProbe) -> None:
    """As in a bare image: no libc, no /proc, /tmp or /dev; every check still answers."""
    root = Path(tempfile.mkdtemp(prefix="stockade-test-probe-"))
    try:
        shutil.copy2(probe, root / "probe")

        def enter() -> None:
            os.chroot(root)
            os.chdir("/")

        run = run_probe(program="/probe", preexec_fn=enter)
        assert list(run.results) == list(CHECKS)
        assert run.facts["processes_visible"].startswith("unknown")
        assert run.facts["scratch"].startswith("/stockade-probe-")
        assert "scratch_left" not in run.facts
        assert sorted(p.name for p in root.iterdir()) == ["probe"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
