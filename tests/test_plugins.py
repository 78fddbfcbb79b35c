"""Plugin discovery: in-tree backends load through the `stockade` entry points like any other."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import ClassVar

import pytest
from stockade import BackendBase, PluginManager, hookimpl
from stockade.errors import BackendNotFound
from stockade.interfaces import Kind


class FakeStorage(BackendBase):
    name = "fake"
    kind: ClassVar[Kind] = "storage"
    priority = -5


class FakePlugin:
    @hookimpl
    def stockade_register_backends(self, registry) -> None:  # type: ignore[no-untyped-def]
        registry.add(FakeStorage)


def test_in_tree_backends_come_from_entry_points() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="stockade")}
    assert eps["builtin"] == "stockade.builtin.plugin"
    assert eps["linux_ns"] == "stockade_linux_ns.plugin"
    assert eps["overlay"] == "stockade_overlay.plugin"
    pm = PluginManager()
    by_name = {(r.kind, r.name): r.plugin for r in pm.registry}
    assert by_name[("storage", "dir")] == "builtin"
    assert by_name[("storage", "overlay")] == "overlay"
    assert by_name[("isolation", "linux_ns")] == "linux_ns"
    assert by_name[("quota", "cgroup")] == "linux_ns"


def test_third_party_plugin_and_blocking() -> None:
    pm = PluginManager(extra=[("thirdparty", FakePlugin())])
    reg = pm.registry.get("storage", "fake")
    assert reg.plugin == "thirdparty" and reg.factory is FakeStorage
    assert [r.name for r in pm.registry.of_kind("storage")][-1] == "fake"  # lowest priority last

    blocked = PluginManager(blocked=["overlay", "thirdparty"], extra=[("thirdparty", FakePlugin())])
    names = {r.name for r in blocked.registry.of_kind("storage")}
    assert "overlay" not in names and "fake" not in names and "dir" in names


def test_blocking_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOCKADE_DISABLE_PLUGINS", "overlay")
    assert "overlay" not in {r.name for r in PluginManager().registry}


def test_unknown_backend_is_one_clear_line() -> None:
    with pytest.raises(BackendNotFound, match=r"no storage backend named 'nope' \(installed: .*dir"):
        PluginManager().registry.get("storage", "nope")


def test_bad_registrations_are_refused() -> None:
    class NoKind:
        name = "x"

    class Twice(FakeStorage):
        pass

    class Bad:
        @hookimpl
        def stockade_register_backends(self, registry) -> None:  # type: ignore[no-untyped-def]
            registry.add(NoKind)

    with pytest.raises(TypeError, match="kind must be one of"):
        PluginManager(load_entry_points=False, extra=[("bad", Bad())])

    class Dup:
        @hookimpl
        def stockade_register_backends(self, registry) -> None:  # type: ignore[no-untyped-def]
            registry.add(Twice)

    with pytest.raises(ValueError, match="registered twice"):
        PluginManager(load_entry_points=False, extra=[("a", FakePlugin()), ("b", Dup())])


def test_importing_every_backend_is_cheap_and_safe() -> None:
    """Importing a backend never fails on the wrong platform: each plugin module imports here."""
    for ep in entry_points(group="stockade"):
        ep.load()


def test_entry_points_read_as_importlib_metadata_reads_them() -> None:
    """stockade.entrypoints (no importlib.metadata on the start-up path) finds the same
    ``stockade`` entry points, and parses sections, comments and extras alike."""
    from importlib.metadata import entry_points

    from stockade.entrypoints import find, parse

    found = find("stockade")
    assert found is not None
    assert sorted((e.name, e.value) for e in found) == sorted(
        (e.name, e.value) for e in entry_points(group="stockade")
    )
    text = (
        "[console_scripts]\nx = a:b\n# note\n[stockade]\n; also a comment\nmine = pkg.mod:obj.attr [extra]\n"
    )
    (ep,) = parse(text, "stockade", "dist")
    assert (ep.name, ep.value) == ("mine", "pkg.mod:obj.attr")
    import stockade.errors

    assert parse("[stockade]\ne = stockade.errors:StockadeError\n", "stockade", "d")[0].load() is (
        stockade.errors.StockadeError
    )
