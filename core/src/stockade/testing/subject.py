"""What the suite runs against: a throwaway host root with one backend of each kind.

A backend's test module names the backends (``stockade_backends`` fixture, or the
``--stockade-*`` options); ``build_subject`` makes the host root, checks that each
backend can run here and imports the conformance image (the default busybox image
plus the in-instance probe). A missing host prerequisite is a "cannot run here" skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import StockadeError, Unavailable
from ..features import Feature, Restriction
from ..host import Host
from ..interfaces import KINDS, IsolationBackend, Kind, QuotaBackend, StorageBackend
from ..plugins import PluginManager
from .outcomes import cannot_run

IMAGE = "stockade-conformance"
PROBE_PATH = "/.stockade-probe"
MARKER_PATH = "/.stockade-conformance"
# A script whose interpreter is /proc/self/exe: whatever execs it runs its own binary inside
# the instance (runc CVE-2019-5736); the probe's escape.proc_exe_write watches for that.
EXE_TRAP_PATH = "/.stockade-exe-trap"
ROOT_PREFIX = "stockade-test-"
SUITE_DIR = "suite"


@dataclass(frozen=True)
class BackendChoice:
    """The backends under test by name (None: the best one that can run here)."""

    isolation: str | None = None
    quota: str | None = None
    storage: str | None = None
    plugins: PluginManager | None = None  # for backends registered in-process
    options: dict[str, dict[str, object]] = field(default_factory=dict)  # per-backend options

    def label(self) -> str:
        return "+".join(n or "auto" for n in (self.isolation, self.quota, self.storage))


@dataclass
class Subject:
    """The host under test and its three chosen backends."""

    host: Host
    root: Path
    isolation: IsolationBackend
    quota: QuotaBackend
    storage: StorageBackend
    image: str = IMAGE
    marker: str = ""  # token written into the image at MARKER_PATH
    probe_problem: str | None = None  # why the probe is not in the image, if it is not

    @property
    def label(self) -> str:
        return f"{self.isolation.name}+{self.quota.name}+{self.storage.name}"

    @property
    def suite_dir(self) -> Path:
        """The suite's own files in the root (instance logs): not the backends' leftovers."""
        return self.root / SUITE_DIR

    @property
    def backends(self) -> dict[Kind, str]:
        return {"isolation": self.isolation.name, "quota": self.quota.name, "storage": self.storage.name}

    def declares(self, feature: Feature) -> list[str]:
        """Which of the chosen backends declare ``feature`` ("quota 'cgroup'", ...)."""
        return [
            f"{b.kind} {b.name!r}"
            for b in (self.isolation, self.quota, self.storage)
            if feature in b.features
        ]

    def enforces(self, restriction: Restriction) -> bool:
        return restriction in self.isolation.restrictions

    def spec(self, name: str, args: list[str], **extra: object) -> dict[str, object]:
        """A spec on the conformance image with these backends; ``extra`` merges on top."""
        from ..spec import merge

        base: dict[str, object] = {
            "name": name,
            "image": self.image,
            "process": {"args": list(args)},
            "backends": dict(self.backends),
            "stop_timeout": 2.0,
        }
        if Feature.NETWORK_ISOLATION not in self.isolation.features:
            base["network"] = {"mode": "host"}  # the only mode a backend without it can give
        return merge(base, extra)


def _make_host(choice: BackendChoice, root: Path) -> Host:
    return Host(
        root,
        isolation=choice.isolation,
        quota=choice.quota,
        storage=choice.storage,
        options=choice.options,
        plugins=choice.plugins,
    )


def build_image(subject: Subject) -> None:
    """The default busybox image plus the probe binary and a marker token."""
    import secrets

    from ..images import build_default_image
    from .probe import ProbeError, probe_binary

    src = subject.root / "image-src"
    try:
        build_default_image(src)
        try:
            shutil.copy2(probe_binary(), src / PROBE_PATH.lstrip("/"))
        except ProbeError as e:
            subject.probe_problem = str(e)
        trap = src / EXE_TRAP_PATH.lstrip("/")
        trap.write_text("#!/proc/self/exe\n")
        trap.chmod(0o755)
        # The ELF interpreter the runtime's binary names, as any glibc image has it: a host
        # binary exec'd into the instance through the trap must start, not fail for want of it
        interp = elf_interpreter(os.path.realpath(sys.executable))
        if interp and os.path.isfile(interp):
            dest = src / interp.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(interp, dest)
        subject.marker = secrets.token_hex(8)
        (src / MARKER_PATH.lstrip("/")).write_text(subject.marker + "\n")
        subject.storage.import_image(subject.image, src)
    finally:
        shutil.rmtree(src, ignore_errors=True)


def elf_interpreter(path: str) -> str | None:
    """The PT_INTERP of a 64-bit little-endian ELF file (its dynamic loader), or None."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack_from(
                    "<IIQQQQ", table, i * phentsize
                )
                if p_type == 3:  # PT_INTERP
                    f.seek(p_offset)
                    return f.read(p_filesz).rstrip(b"\0").decode()
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


def make_root(parent: str | None) -> Path:
    if parent:  # `stockade --root DIR conformance`: the roots go below DIR, made if need be
        os.makedirs(parent, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir=parent))


def build_subject(choice: BackendChoice, parent: str | None = None) -> Subject:
    """A fresh host root with the chosen backends; skips "cannot run here" if one cannot run."""
    root = make_root(parent)
    host = _make_host(choice, root)
    try:
        chosen = {}
        for kind in KINDS:
            try:
                chosen[kind] = host.choose(kind)
            except Unavailable as e:
                cannot_run(str(e))
        subject = Subject(
            host=host,
            root=root,
            isolation=cast(IsolationBackend, chosen["isolation"]),
            quota=cast(QuotaBackend, chosen["quota"]),
            storage=cast(StorageBackend, chosen["storage"]),
        )
        host.store.ensure()
        try:
            build_image(subject)
        except StockadeError as e:
            cannot_run(f"cannot import the conformance image into storage {subject.storage.name!r}: {e}")
        return subject
    except BaseException:
        destroy_root(host, root)
        raise


def destroy_root(host: Host, root: Path) -> list[str]:
    """Delete every instance, gc, unmount and remove the root; what could not be cleaned."""
    problems: list[str] = []
    for inst in host.instances():
        try:
            inst.delete(force=True)
        except Exception as e:  # keep cleaning; the caller reports what is left
            problems.append(f"delete {inst.name}: {e}")
    with contextlib.suppress(Exception):
        host.gc()
    problems.extend(_forget_networks(host))
    storage_images = []
    with contextlib.suppress(Exception):
        st = cast(StorageBackend, host.choose("storage"))
        storage_images = [i for i in st.list_images() if i == IMAGE]
        for image in storage_images:
            st.remove_image(image)
    with contextlib.suppress(Exception):
        from ..linux import umount_tree

        umount_tree(str(root))
    shutil.rmtree(root, ignore_errors=True)
    return problems


@contextlib.contextmanager
def subject_of(choice: BackendChoice, parent: str | None = None) -> Iterator[Subject]:
    subject = build_subject(choice, parent)
    try:
        yield subject
    finally:
        destroy_root(subject.host, subject.root)


def _forget_networks(host: Host) -> list[str]:
    """Remove the named networks the root's instances made (they outlive instances by design).

    There is no backend-neutral contract to drop a host root's networks yet, so this knows
    the in-tree linux_ns one; other backends' networks are reported by the leftover check.
    """
    try:
        from stockade_linux_ns.net.networks import Networks  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return []
    problems = []
    try:
        nets = Networks(host.config("linux_ns"))
        for info in nets.list():
            try:
                nets.delete(info.name)
            except Exception as e:
                problems.append(f"network {info.name}: {e}")
    except Exception as e:
        problems.append(f"networks: {e}")
    return problems
