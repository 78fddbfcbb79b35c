"""Write the uncompressed ELF vmlinux out of an xz-compressed bzImage.

QEMU boots an ELF vmlinux directly (PVH), skipping the in-guest decompression that
costs seconds under TCG.
"""

import lzma
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"


def main(src: str, dest: str) -> int:
    with open(src, "rb") as f:
        data = f.read()
    off = data.find(XZ_MAGIC)
    while off >= 0:
        try:
            out = lzma.LZMADecompressor().decompress(data[off:])
        except lzma.LZMAError:
            out = b""
        if out[:4] == b"\x7fELF":
            with open(dest, "wb") as f:
                f.write(out)
            return 0
        off = data.find(XZ_MAGIC, off + 1)
    print(f"{src}: no xz-compressed ELF kernel inside", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
