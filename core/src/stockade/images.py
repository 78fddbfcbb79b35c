"""The built-in default image, made from what the machine has: a static busybox.

No download: ``build_default_image`` lays out a small root file system (busybox and
its applet links, /etc basics, empty mount points) in a directory, which a storage
backend then imports as the image ``default``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import ImageNotFound

DEFAULT_IMAGE = "default"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox-static")

_DIRS = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "dev": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "run": 0o755,
    "tmp": 0o1777,
    "var": 0o755,
    "var/tmp": 0o1777,
    "var/log": 0o755,
    "root": 0o700,
    "home": 0o755,
    "mnt": 0o755,
    "opt": 0o755,
}
_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    "etc/shadow": "root:*:19000:0:99999:7:::\n",
    "etc/hostname": "stockade\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/resolv.conf": "",
    "etc/os-release": (
        'NAME="stockade default"\nID=stockade\nPRETTY_NAME="stockade default image (busybox)"\n'
    ),
}


def find_busybox() -> str:
    for cand in BUSYBOX_CANDIDATES:
        if os.access(cand, os.X_OK) and _is_static(cand):
            return cand
    raise ImageNotFound(
        "the default image needs a static busybox: install Debian's busybox-static "
        "(apt-get install busybox-static)"
    )


def _is_static(path: str) -> bool:
    # A dynamic busybox would need the host's libc inside the image; refuse it.
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    return b"ld-linux" not in head and b"/lib64/ld" not in head


def build_default_image(dest: Path) -> Path:
    """Lay out the default image in ``dest`` (which must not exist). Returns ``dest``."""
    busybox = find_busybox()
    dest.mkdir(parents=True)
    os.chmod(dest, 0o755)
    for d, mode in _DIRS.items():
        p = dest / d
        p.mkdir(exist_ok=True)
        os.chmod(p, mode)
    for f, text in _FILES.items():
        (dest / f).write_text(text)
    os.chmod(dest / "etc/shadow", 0o640)
    shutil.copy2(busybox, dest / "bin/busybox")
    os.chmod(dest / "bin/busybox", 0o755)
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True)
    for rel in applets.stdout.split():
        link = dest / rel
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)
    return dest
