"""libnftables (libnftables.so.1) through ctypes, JSON in and out.

One context per process, loaded on first use; calls are serialized by a lock because
a context's output buffers are not thread safe. No ``nft`` subprocess: a command is one
library call (a netlink transaction), well under a millisecond.
"""

from __future__ import annotations

import ctypes
import json
import threading
from functools import cache
from typing import Any

from stockade.errors import Unavailable

_OUTPUT_JSON = 1 << 4
_OUTPUT_HANDLE = 1 << 3


class NftError(Exception):
    """A command failed; ``str()`` is libnftables' error text."""


class Nft:
    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1", use_errno=True)
        except OSError as e:
            raise Unavailable(
                "network: libnftables.so.1 is missing; install the Debian package libnftables1"
            ) from e
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise Unavailable("network: nft_ctx_new failed (libnftables)")
        lib.nft_ctx_output_set_flags(ctx, _OUTPUT_JSON | _OUTPUT_HANDLE)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib = lib
        self._ctx = ctx
        self._lock = threading.Lock()

    def run(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run a batch of JSON commands atomically; return the ``nftables`` items of the output."""
        return self.run_text(json.dumps({"nftables": commands}))

    def run_text(self, text_or_json: str) -> list[dict[str, Any]]:
        """Run a buffer: JSON, or nft's own syntax (the library falls back to it)."""
        text = text_or_json.encode()
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text)
            out = self._lib.nft_ctx_get_output_buffer(self._ctx) or b""
            err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
        if rc != 0:
            raise NftError(err.decode(errors="replace").strip() or f"nft command failed ({rc})")
        if not out.strip():
            return []
        items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
        return items

    def close(self) -> None:
        """Free the context (and its netlink socket): for one made for a single job."""
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


@cache
def nft() -> Nft:
    return Nft()
