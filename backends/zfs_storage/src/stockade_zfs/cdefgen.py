"""Generate ``_cdef.py``, the cffi declarations, from the installed OpenZFS headers.

pyzfs keeps a hand-copied cdef, and it drifted from the headers (its ``lzc_promote``
no longer matches). Here the declarations are cut out of the headers themselves:
each wanted function's prototype, each wanted enum with its values computed, each
wanted function-pointer typedef. Only opaque handles are declared by hand (cffi ABI
mode never needs a struct layout), so nothing can silently disagree with the library.

    python -m stockade_zfs.cdefgen [--include DIR] [--check]

DIR defaults to /usr/include/libzfs (Debian's libzfslinux-dev, contrib). ``--check``
exits 1 if the committed module is not what the headers give.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path

DEFAULT_INCLUDE = Path("/usr/include/libzfs")
HEADERS = ("libzfs_core.h", "libzfs.h", "sys/fs/zfs.h", "sys/nvpair.h", "libnvpair.h")
OUTPUT = Path(__file__).with_name("_cdef.py")

# Opaque handles and the scalar typedefs of libspl: the only hand-written part.
# boolean_t is an enum {B_FALSE, B_TRUE} in libspl, so an int in the ABI.
PRELUDE = """\
typedef int boolean_t;
typedef unsigned int uint_t;
typedef struct nvlist nvlist_t;
typedef struct nvpair nvpair_t;
typedef struct libzfs_handle libzfs_handle_t;
typedef struct zfs_handle zfs_handle_t;
typedef int zfs_prop_t;
"""

# (enum tag or typedef name, which header): emitted with values evaluated from the header.
ENUMS = (
    ("zfs_type_t", "sys/fs/zfs.h"),
    ("lzc_dataset_type", "libzfs_core.h"),
    ("lzc_send_flags", "libzfs_core.h"),
    ("zfs_error_t", "libzfs.h"),
    ("zfs_errno_t", "sys/fs/zfs.h"),
)
TYPEDEFS = (("zfs_iter_f", "libzfs.h"),)
FUNCTIONS = {
    "libzfs_core.h": (
        "libzfs_core_init",
        "libzfs_core_fini",
        "lzc_create",
        "lzc_clone",
        "lzc_snapshot",
        "lzc_destroy_snaps",
        "lzc_destroy",
        "lzc_exists",
        "lzc_rollback",
        "lzc_rollback_to",
        "lzc_send",
        "lzc_send_space",
        "lzc_receive",
        "lzc_rename",
        "lzc_hold",
        "lzc_release",
    ),
    "libzfs.h": (
        "libzfs_init",
        "libzfs_fini",
        "libzfs_errno",
        "libzfs_error_description",
        "libzfs_print_on_error",
        "zfs_open",
        "zfs_close",
        "zfs_get_name",
        "zfs_get_type",
        "zfs_prop_get_int",
        "zfs_prop_set",
        "zfs_is_mounted",
        "zfs_mount",
        "zfs_unmount",
        "zfs_iter_filesystems",
        "zfs_iter_snapshots",
    ),
    "sys/fs/zfs.h": ("zfs_name_to_prop", "zfs_prop_string_to_index"),
    "sys/nvpair.h": (
        "fnvlist_alloc",
        "fnvlist_free",
        "fnvlist_add_boolean",
        "fnvlist_add_uint64",
        "fnvlist_add_string",
        "nvlist_next_nvpair",
        "nvpair_name",
        "fnvpair_value_int32",
    ),
}

# Export/visibility markers that prefix declarations (``extern``, ``_LIBZFS_H``...).
_MARKER = re.compile(r"^(?:(?:extern|_[A-Z0-9_]+_H)\s+)+")
_BINOPS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.LShift: operator.lshift,
    ast.RShift: operator.rshift,
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
}


class HeaderError(Exception):
    pass


def _statements(text: str) -> list[str]:
    """Top-level C statements of a header, comments and preprocessor lines removed."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    # the C++ linkage wrappers open a brace that would make the whole header one block
    text = re.sub(r"#ifdef\s+__cplusplus.*?#endif", " ", text, flags=re.S)
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = " ".join(lines)
    out: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in joined:
        cur.append(ch)
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ";" and depth == 0:
            out.append(re.sub(r"\s+", " ", "".join(cur)).strip())
            cur = []
    return out


def _eval(expr: str, known: dict[str, int]) -> int:
    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id in known:
            return known[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise HeaderError(f"cannot evaluate enum value {expr!r}")

    return ev(ast.parse(re.sub(r"(\d+)[uUlL]+\b", r"\1", expr), mode="eval").body)


def _enum(stmts: list[str], name: str) -> str:
    """``name`` is an enum tag (``enum name {...}``) or a typedef (``typedef enum ... {...} name``)."""
    for s in stmts:
        tagged = re.match(rf"^enum {re.escape(name)} \{{(.*)\}}\s*;$", s)
        typed = re.match(rf"^typedef enum(?: \w+)? ?\{{(.*)\}} {re.escape(name)}\s*;$", s)
        m = tagged or typed
        if not m:
            continue
        known: dict[str, int] = {}
        nxt = 0
        items: list[str] = []
        for raw in m.group(1).split(","):
            part = raw.strip()
            if not part:
                continue
            ident, _, value = part.partition("=")
            ident = ident.strip()
            nxt = _eval(value.strip(), known) if value.strip() else nxt
            known[ident] = nxt
            items.append(f"    {ident} = {nxt},")
            nxt += 1
        body = "\n".join(items)
        return f"enum {name} {{\n{body}\n}};" if tagged else f"typedef enum {{\n{body}\n}} {name};"
    raise HeaderError(f"enum {name} not found")


def _typedef(stmts: list[str], name: str) -> str:
    for s in stmts:
        if s.startswith("typedef") and re.search(rf"\(\s*\*\s*{re.escape(name)}\s*\)", s):
            return s
    raise HeaderError(f"typedef {name} not found")


def _function(stmts: list[str], name: str) -> str:
    for s in stmts:
        s2 = _MARKER.sub("", s)
        if re.match(rf"^[\w\s\*]*?\b{re.escape(name)}\s*\(", s2) and s2.endswith(");"):
            return s2.replace("( ", "(").replace(" )", ")")
    raise HeaderError(f"function {name} not found")


def generate(include: Path = DEFAULT_INCLUDE) -> str:
    """The text of ``_cdef.py`` for the headers under ``include``."""
    texts: dict[str, str] = {}
    digest = hashlib.sha256()
    for h in HEADERS:
        path = include / h
        try:
            texts[h] = path.read_text()
        except FileNotFoundError as e:
            raise HeaderError(f"{path} not found: install libzfslinux-dev (Debian contrib)") from e
        digest.update(texts[h].encode())
    stmts = {h: _statements(t) for h, t in texts.items()}
    parts = [PRELUDE.rstrip()]
    parts += [_enum(stmts[h], name) for name, h in ENUMS]
    parts += [_typedef(stmts[h], name) for name, h in TYPEDEFS]
    for h, names in FUNCTIONS.items():
        parts.append(f"/* {h} */")
        parts += [_function(stmts[h], n) for n in names]
    cdef = "\n".join(parts)
    return (
        '"""cffi declarations for libzfs_core, libzfs and libnvpair.\n\n'
        "GENERATED by stockade_zfs.cdefgen from the OpenZFS headers: do not edit; rerun\n"
        "`python -m stockade_zfs.cdefgen` when the headers change.\n"
        '"""\n\n'
        f'HEADERS_SHA256 = "{digest.hexdigest()}"\n\n'
        f'CDEF = """\n{cdef}\n"""\n'
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stockade_zfs.cdefgen", description=__doc__.split("\n")[0])
    ap.add_argument("--include", type=Path, default=DEFAULT_INCLUDE, help="OpenZFS header directory")
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true", help="only check that the output is current")
    args = ap.parse_args(argv)
    try:
        text = generate(args.include)
    except HeaderError as e:
        print(f"cdefgen: {e}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"cdefgen: {args.output} is stale: run python -m stockade_zfs.cdefgen", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
