"""Every hook is documented in docs/hooks.md and called in a real lifecycle here."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest
from stockade import Host, PluginManager, hookimpl, hookspecs

DOCS = Path(__file__).parent.parent / "docs" / "hooks.md"


def _hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("stockade_")]


def test_every_hook_is_documented() -> None:
    text = DOCS.read_text()
    for name in _hook_names():
        assert f"### `{name}(" in text, f"{name} is not documented in docs/hooks.md"
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc, f"{name} has no docstring"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def stockade_register_backends(self, registry: Any) -> None:
        self.calls.append(("stockade_register_backends", None))

    @hookimpl
    def stockade_prepare_spec(self, spec: dict[str, Any]) -> None:
        spec.setdefault("labels", {})["prepared-by"] = "recorder"
        self.calls.append(("stockade_prepare_spec", spec["name"]))

    @hookimpl
    def stockade_instance_created(self, instance: Any) -> None:
        self.calls.append(("stockade_instance_created", instance.status))

    @hookimpl
    def stockade_instance_started(self, instance: Any) -> None:
        self.calls.append(("stockade_instance_started", instance.status))

    @hookimpl
    def stockade_instance_stopped(self, instance: Any, exit_status: int | None) -> None:
        self.calls.append(("stockade_instance_stopped", exit_status))

    @hookimpl
    def stockade_instance_deleted(self, name: str) -> None:
        self.calls.append(("stockade_instance_deleted", name))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_every_hook_is_called_in_a_lifecycle(root_dir: Path) -> None:
    rec = Recorder()
    pm = PluginManager(extra=[("recorder", rec)])
    with Host(root_dir, plugins=pm) as host:
        inst = host.create({"name": "hooked", "process": {"args": ["sh", "-c", "exit 3"]}})
        assert inst.spec.labels["prepared-by"] == "recorder"
        inst.start()
        assert inst.wait() == 3
        inst.delete()
    assert [c[0] for c in rec.calls] == [
        "stockade_register_backends",
        "stockade_prepare_spec",
        "stockade_instance_created",
        "stockade_instance_started",
        "stockade_instance_stopped",
        "stockade_instance_deleted",
    ]
    assert ("stockade_instance_stopped", 3) in rec.calls
    assert ("stockade_instance_deleted", "hooked") in rec.calls
    assert set(_hook_names()) == {c[0] for c in rec.calls}


class StartWatcher:
    """Implements no `created` hook: `run` may then release the process before the state
    write (Host.create(start=True)); the other hooks must still come, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def stockade_instance_started(self, instance: Any) -> None:
        self.calls.append(("started", instance.status))

    @hookimpl
    def stockade_instance_stopped(self, instance: Any, exit_status: int | None) -> None:
        self.calls.append(("stopped", exit_status))

    @hookimpl
    def stockade_instance_deleted(self, name: str) -> None:
        self.calls.append(("deleted", name))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.parametrize("watch_created", [False, True])
def test_run_calls_the_hooks_whether_or_not_created_is_watched(root_dir: Path, watch_created: bool) -> None:
    watcher = StartWatcher()
    extra: list[tuple[str, object]] = [("watcher", watcher)]
    created: list[str] = []
    if watch_created:

        class Created:
            @hookimpl
            def stockade_instance_created(self, instance: Any) -> None:
                # the process must not have started: the FIFO still waits for it
                created.append(instance.status)

        extra.append(("created", Created()))
    with Host(root_dir, plugins=PluginManager(extra=extra)) as host:
        assert host.run({"name": "ran", "process": {"args": ["sh", "-c", "exit 5"]}}) == 5
    assert watcher.calls == [("started", "running"), ("stopped", 5), ("deleted", "ran")]
    assert created == (["created"] if watch_created else [])
