"""What the host offers overlayfs: the kernel's file system list and the fs behind a path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# File systems that cannot carry an overlay upper dir: no trusted xattrs, no RENAME_WHITEOUT
# or O_TMPFILE, or overlay itself (nesting is refused as an upper).
UNFIT_UPPER = {
    "overlay",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "9p",
    "fuse",
    "fuseblk",
    "vfat",
    "exfat",
    "msdos",
    "iso9660",
    "squashfs",
    "erofs",
}


def kernel_has(fstype: str) -> bool:
    try:
        with open("/proc/filesystems") as f:
            return any(line.split()[-1] == fstype for line in f if line.strip())
    except OSError:
        return False


def kernel_has_overlay() -> bool:
    return kernel_has("overlay")


def existing_ancestor(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.resolve()


def fs_type(path: Path) -> tuple[str, str]:
    """(fs type, mount point) of the file system holding ``path`` (which must exist)."""
    target = str(path.resolve())
    best, best_type = "", "unknown"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = left.split(" ")[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
            inside = target == mp or target.startswith(mp.rstrip("/") + "/")
            # later lines stack over earlier ones on the same mount point
            if inside and len(mp) >= len(best):
                best, best_type = mp, right.split(" ")[0]
    return best_type, best


def supports_trusted_xattrs(path: Path) -> bool:
    """Read-only check: asking for a missing attribute says ENODATA where the namespace works."""
    try:
        os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False)
    except OSError as e:
        return e.errno == errno.ENODATA
    return True
