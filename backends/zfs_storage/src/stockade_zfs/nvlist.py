"""nvlists built and read through libnvpair (``fnvlist_*``), freed deterministically."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .libs import lib

# None (or True) is a presence-only boolean (how lzc_snapshot names its snapshots);
# int is uint64 (sizes, index properties); str is a string property.
NvValue = int | str | bool | None


@contextmanager
def nvlist_in(items: Mapping[str, NvValue]) -> Iterator[Any]:
    """An ``nvlist_t *`` holding ``items``, valid inside the block."""
    nv_lib = lib().nvpair
    nvl = nv_lib.fnvlist_alloc()
    try:
        for key, value in items.items():
            k = key.encode()
            if value is None or value is True:
                nv_lib.fnvlist_add_boolean(nvl, k)
            elif value is False:
                continue
            elif isinstance(value, int):
                nv_lib.fnvlist_add_uint64(nvl, k, value)
            else:
                nv_lib.fnvlist_add_string(nvl, k, value.encode())
        yield nvl
    finally:
        nv_lib.fnvlist_free(nvl)


@contextmanager
def nvlist_out() -> Iterator[Any]:
    """An ``nvlist_t **`` for a call to fill in (an errlist); freed after the block."""
    libs = lib()
    holder = libs.ffi.new("nvlist_t **")
    try:
        yield holder
    finally:
        if holder[0] != libs.ffi.NULL:
            libs.nvpair.fnvlist_free(holder[0])


def int32_items(nvl: Any) -> dict[str, int]:
    """The ``name -> int32`` pairs of an errlist (as lzc_snapshot/lzc_destroy_snaps fill it)."""
    libs = lib()
    out: dict[str, int] = {}
    if nvl == libs.ffi.NULL:
        return out
    pair = libs.nvpair.nvlist_next_nvpair(nvl, libs.ffi.NULL)
    while pair != libs.ffi.NULL:
        name = libs.ffi.string(libs.nvpair.nvpair_name(pair)).decode()
        out[name] = int(libs.nvpair.fnvpair_value_int32(pair))
        pair = libs.nvpair.nvlist_next_nvpair(nvl, pair)
    return out
