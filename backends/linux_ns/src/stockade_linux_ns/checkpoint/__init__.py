"""Checkpoint, restore and live-migration support of the linux_ns backend, with CRIU.

Light on import: CRIU is looked for, and its RPC spoken, only when a function runs.
``CriuCheckpointer`` is what the isolation backend hands to the Host (see
stockade.checkpointing.Checkpointer).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from stockade.checkpointing import LazyPagesDaemon
    from stockade.interfaces import InstanceContext, JoinFn, Spawned


class CriuCheckpointer:
    """Checkpoint/restore of linux_ns instances through CRIU (swrk RPC): 4.1+, or 3.17+ on
    kernels before 6.13."""

    name = "criu"

    def available(self) -> str:
        """Empty if a working CRIU is here, else why not (one line)."""
        from .criu import probe_reason

        return probe_reason()

    def capabilities(self) -> dict[str, bool]:
        """pre-copy (soft-dirty) and post-copy (userfaultfd, and a lazy page server that works)."""
        return {k: not v for k, v in self.live_problems().items()}

    def live_problems(self) -> dict[str, str]:
        """Per live method, why it cannot run here ('' when it can)."""
        from .criu import feature_check, postcopy_problem

        f = feature_check()
        return {
            "precopy": "" if f["mem_track"] else "pre-copy: this kernel has no soft-dirty memory tracking",
            "postcopy": postcopy_problem()
            if f["lazy_pages"]
            else "post-copy: this kernel has no userfaultfd",
        }

    def warm_up(self) -> None:
        """Import and look up what a restore needs, so none of it falls in a freeze."""
        from . import driver  # noqa: F401
        from .criu import find

        find()

    def version(self) -> str:
        from .criu import find, version_of

        v = version_of(find())
        return ".".join(map(str, v)) if v else "?"

    def preflight(self, ctx: InstanceContext, *, live: bool = False) -> list[str]:
        from .driver import preflight

        return preflight(ctx, live=live)

    def checkpoint(
        self,
        ctx: InstanceContext,
        images: Path,
        *,
        leave_running: bool = False,
        leave_stopped: bool = False,
        lazy_ps_fd: int | None = None,
        parent: str | None = None,
        on_images: Callable[[], None] | None = None,
        on_freeze: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        from .driver import dump

        r = dump(
            ctx,
            images,
            leave_running=leave_running,
            leave_stopped=leave_stopped,
            lazy_ps_fd=lazy_ps_fd,
            parent=parent,
            on_images=on_images,
            on_freeze=on_freeze,
        )
        return {"freeze_s": r.freeze_s, "pages_bytes": r.pages_bytes, "images_bytes": r.images_bytes}

    def pre_dump(self, ctx: InstanceContext, images: Path, *, parent: str | None = None) -> dict[str, Any]:
        from .driver import pre_dump

        r = pre_dump(ctx, images, parent=parent)
        return {"freeze_s": r.freeze_s, "pages_bytes": r.pages_bytes, "images_bytes": r.images_bytes}

    def unlock_network(self, ctx: InstanceContext) -> list[str]:
        """Before a tree left stopped by a dump resumes in place: remove criu's network lock."""
        from .driver import unlock_network

        return unlock_network(ctx)

    def lazy_pages(self, images: Path, ps_fd: int) -> LazyPagesDaemon:
        """Start the daemon a post-copy restore (``restore(..., lazy=True)``) needs first."""
        from .driver import LazyPages

        return LazyPages(images, ps_fd)

    def restore(
        self,
        ctx: InstanceContext,
        images: Path,
        join: JoinFn,
        *,
        stdout_path: Path | None = None,
        lazy: bool = False,
        leave_stopped: bool = False,
    ) -> Spawned:
        from .driver import restore

        return restore(ctx, images, join, stdout_path=stdout_path, lazy=lazy, leave_stopped=leave_stopped)


__all__ = ["CriuCheckpointer"]
