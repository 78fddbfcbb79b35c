"""The supervisor protocol's JSON codec (stockade.wire) agrees with the json module."""

from __future__ import annotations

import json

import pytest
from stockade import wire

SAMPLES = [
    {"op": "cli", "argv": ["run", "--rm", "--", "sh", "-c", 'echo "é\\n\t"; exit 3'], "cwd": "/tmp/ü"},
    {"ok": True, "exit": 0, "stdout": "x\n", "stderr": "", "n": None, "f": 1.5, "big": 1 << 70},
    [1, [2, [3, {}]], "\u0000\u2028"],
]


@pytest.mark.parametrize("obj", SAMPLES)
def test_round_trip_matches_json(obj: object) -> None:
    text = wire.dumps(obj)
    assert text == json.dumps(obj, separators=(",", ":"))
    assert wire.loads(text) == obj == json.loads(text)
    assert wire.loads(text.encode() + b"\n") == obj


def test_rejects_what_is_not_json() -> None:
    with pytest.raises(TypeError):
        wire.dumps({"fd": object()})
    with pytest.raises(ValueError):
        wire.loads('{"a": 1} trailing')
    with pytest.raises(ValueError):
        wire.loads("")
