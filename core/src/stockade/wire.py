"""JSON for the supervisor protocol, straight from the ``_json`` accelerator.

The ``json`` package imports ``re`` (and with it enum and functools): ~6 ms of the thin
CLI's budget for what is one encode and a couple of decodes per command. ``_json`` is the
C code ``json`` itself calls, with the same output (compact separators, ASCII).
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _DecodeContext:
    """The attributes ``_json.make_scanner`` reads (those of a json.JSONDecoder)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__
    memo: dict[str, str] = {}


def _not_json(o: object) -> Any:
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


_scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]  # duck-typed in C
_encode = _json.make_encoder({}, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, True)


def dumps(obj: Any) -> str:
    return "".join(_encode(obj, 0))


def loads(text: str | bytes) -> Any:
    s = text.decode() if isinstance(text, bytes) else text
    s = s.strip()
    try:
        obj, end = _scan(s, 0)
    except StopIteration as e:
        raise ValueError(f"not JSON: {s[:60]!r}") from e
    if end != len(s):
        raise ValueError(f"trailing data after JSON: {s[end : end + 60]!r}")
    return obj
