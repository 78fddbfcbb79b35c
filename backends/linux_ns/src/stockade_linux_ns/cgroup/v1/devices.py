"""v1 devices: deny everything, then allow the minimal set a container needs (as docker does)."""

from __future__ import annotations

import os

from .. import fs

CONTROLLER = "devices"

ALLOW = (
    "c *:* m",  # mknod of any node (using it is still denied)
    "b *:* m",
    "c 1:3 rwm",  # /dev/null
    "c 1:5 rwm",  # /dev/zero
    "c 1:7 rwm",  # /dev/full
    "c 1:8 rwm",  # /dev/random
    "c 1:9 rwm",  # /dev/urandom
    "c 5:0 rwm",  # /dev/tty
    "c 5:1 rwm",  # /dev/console
    "c 5:2 rwm",  # /dev/ptmx
    "c 136:* rwm",  # /dev/pts/*
)


def apply(path: str) -> None:
    fs.write(os.path.join(path, "devices.deny"), "a")
    for rule in ALLOW:
        fs.write(os.path.join(path, "devices.allow"), rule)


def rules(path: str) -> list[str]:
    return fs.read(os.path.join(path, "devices.list")).splitlines()
