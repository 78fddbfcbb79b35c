"""The spec is validated once, at the boundary: every problem at once, each with its path."""

from __future__ import annotations

from dataclasses import fields

import pytest
from stockade import InstanceSpec, SpecError
from stockade.features import Restriction
from stockade.limits import IO_LIMITS, QUOTA_LIMITS
from stockade.spec import IOLimits, Resources, parse_publish, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64M", 64 << 20),
        ("64MiB", 64 << 20),
        ("1g", 1 << 30),
        ("1.5G", int(1.5 * (1 << 30))),
        (4096, 4096),
        ("512k", 512 << 10),
        ("100", 100),
        ("2TB", 2 << 40),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12XB", "", "M", "-1", "1.2.3G", True, None, "64 iB"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(bad)


def test_every_problem_reported_with_its_path() -> None:
    with pytest.raises(SpecError) as ei:
        InstanceSpec.from_dict(
            {
                "name": "bad name",
                "bogus": 1,
                "resources": {"memory": "12XB", "cpus": "lots", "pids": 0, "io": {"read_bps": "fast"}},
                "process": {"args": [], "cwd": "relative"},
                "mounts": [{"target": "/x", "type": "nfs"}],
                "allow": ["mnt"],
                "network": {"mode": "carrier-pigeon"},
            }
        )
    paths = [p for p, _ in ei.value.problems]
    for expected in (
        "bogus",
        "name",
        "resources.memory",
        "resources.cpus",
        "resources.pids",
        "resources.io.read_bps",
        "process.args",
        "process.cwd",
        "mounts[0].type",
        "mounts[0].source",
        "allow[0]",
        "network.mode",
    ):
        assert expected in paths, (expected, paths)
    msg = str(ei.value)
    assert "resources.memory: '12XB' is not a size" in msg
    assert "did you mean 'mount'" in msg
    assert "\n" not in msg


def test_round_trip() -> None:
    spec = InstanceSpec.from_dict(
        {
            "name": "web1",
            "hostname": "web1.example",
            "image": "default",
            "process": {"args": ["sh", "-c", "true"], "env": {"A": "1"}, "user": "1000:1000"},
            "resources": {
                "memory": "64M",
                "memory_swap": "128M",
                "cpus": 0.5,
                "pids": 64,
                "io": {"write_bps": "1M"},
            },
            "mounts": [
                {"target": "/data", "source": "/tmp", "readonly": True},
                {"type": "tmpfs", "target": "/t"},
            ],
            "allow": ["raw_sockets"],
            "user_namespace": True,
            "labels": {"k": "v"},
            "network": {"mode": "bridge", "network": "n1", "publish": ["8080:80/tcp"]},
        }
    )
    again = InstanceSpec.from_dict(spec.to_dict())
    assert again == spec
    assert spec.resources.memory == 64 << 20 and spec.process.uid == 1000
    assert spec.allow == frozenset({Restriction.RAW_SOCKETS})
    assert spec.network.publish[0].host_port == 8080


def test_defaults() -> None:
    spec = InstanceSpec.from_dict({"name": "x"})
    assert spec.image == "default" and spec.effective_hostname == "x"
    assert spec.network.mode == "loopback" and not spec.allow
    assert spec.process.args == ("/bin/sh",)


def test_swap_needs_memory_and_must_cover_it() -> None:
    with pytest.raises(SpecError, match="resources.memory_swap: needs resources.memory"):
        InstanceSpec.from_dict({"name": "x", "resources": {"memory_swap": "1G"}})
    with pytest.raises(SpecError, match="must be at least resources.memory"):
        InstanceSpec.from_dict({"name": "x", "resources": {"memory": "1G", "memory_swap": "512M"}})


def test_limit_names_are_the_resource_fields() -> None:
    # the names live apart from the dataclasses (the CLI's run path): a new limit needs both
    assert {f.name for f in fields(Resources)} == {*QUOTA_LIMITS, "cpu_period_us", "disk", "io"}
    assert [f.name for f in fields(IOLimits)] == list(IO_LIMITS)
    for res, cgroup in (
        ({"memory": "1G"}, True),
        ({"cpuset_mems": "0"}, True),
        ({"io": {"write_iops": 5}}, True),
        ({"disk": "1G"}, False),
    ):
        assert InstanceSpec.from_dict({"name": "x", "resources": res}).resources.any_cgroup_limit() is cgroup


def test_publish() -> None:
    assert parse_publish("127.0.0.1:80:8080/udp").protocol == "udp"
    with pytest.raises(ValueError):
        parse_publish("99999:1")
    with pytest.raises(SpecError, match="network.publish: needs network.mode = 'bridge'"):
        InstanceSpec.from_dict({"name": "x", "network": {"publish": ["80:80"]}})


def test_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "s.toml"
    f.write_text('name = "t"\n[resources]\nmemory = "32M"\n[process]\nargs = ["echo", "hi"]\n')
    spec = InstanceSpec.from_toml(str(f), {"resources": {"pids": 5}})
    assert spec.resources.memory == 32 << 20 and spec.resources.pids == 5
    f.write_text("name = \n")
    with pytest.raises(SpecError, match="not valid TOML"):
        InstanceSpec.from_toml(str(f))
