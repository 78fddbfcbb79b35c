"""The pytest plugin: options, the ``requires`` marker, the subject fixtures, the outcome log.

Opt in with ``-p stockade.testing`` or ``pytest_plugins = ["stockade.testing"]``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..features import Feature, Restriction
from ..host import Host
from .declared import Declared, declared_of, options_of
from .outcomes import Outcome, classify_skip, not_supported
from .subject import BackendChoice, Subject, build_subject, destroy_root

_RECORDS = pytest.StashKey[dict[str, dict[str, Any]]]()
_SUBJECTS = pytest.StashKey[dict[str, dict[str, Any]]]()
NOTE = "stockade_note"
COLUMN = "stockade_column"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("stockade", "stockade conformance suite")
    for kind in ("isolation", "quota", "storage"):
        group.addoption(
            f"--stockade-{kind}",
            default=None,
            metavar="NAME",
            help=f"{kind} backend under test (default: the best one that can run here)",
        )
    group.addoption(
        "--stockade-option",
        action="append",
        default=[],
        metavar="BACKEND.KEY=VALUE",
        help="a backend option (repeatable), e.g. overlay.quota_fs=btrfs; VALUE is JSON or a string",
    )
    group.addoption(
        "--stockade-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="run only the tests of this matrix column (repeatable): a feature such as "
        "memory_limit, or restriction.NAME",
    )
    group.addoption(
        "--stockade-root",
        default=None,
        metavar="DIR",
        help="where to make the throwaway host roots (default: the temp dir)",
    )
    group.addoption(
        "--stockade-results",
        default=None,
        metavar="FILE",
        help="write every conformance outcome as JSON (what `stockade conformance` reads)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(feature_or_restriction, relaxable=False): the chosen backends must declare it, "
        "else the test is reported 'not supported'",
    )
    config.addinivalue_line("markers", "conformance_column(name): the feature-matrix column of a test")
    config.stash[_RECORDS] = {}
    config.stash[_SUBJECTS] = {}
    config.pluginmanager.register(Recorder(config), "stockade-recorder")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def stockade_backends(request: pytest.FixtureRequest) -> BackendChoice:
    """The backends under test: the test class's ``backends`` attribute, else the options.

    A backend's test class sets ``backends = BackendChoice(...)`` (or overrides this fixture).
    """
    chosen = getattr(request.cls, "backends", None)
    if isinstance(chosen, BackendChoice):
        return chosen

    def opt(name: str) -> str | None:
        # absent when the plugin came late (pytest_plugins in a test module): no options then
        value = request.config.getoption(name, default=None)
        return str(value) if value else None

    try:
        options = options_of(request.config.getoption("stockade_option", default=None) or [])
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    return BackendChoice(
        isolation=opt("stockade_isolation"),
        quota=opt("stockade_quota"),
        storage=opt("stockade_storage"),
        options=options,
    )


@pytest.fixture(scope="class")
def stockade_declared(request: pytest.FixtureRequest, stockade_backends: BackendChoice) -> Declared:
    """What the chosen backends declare (from their classes; nothing is built)."""
    declared = declared_of(stockade_backends)
    request.config.stash[_SUBJECTS][_class_key(request.node)] = declared.to_json()
    return declared


@pytest.fixture(scope="class")
def stockade_subject(request: pytest.FixtureRequest, stockade_declared: Declared) -> Iterator[Subject]:
    """A throwaway host root with the chosen backends and the conformance image."""
    from .harness import host_resources

    subject = build_subject(stockade_declared.choice, request.config.getoption("stockade_root", default=None))
    try:
        yield subject
    finally:
        problems = destroy_root(subject.host, subject.root)
        left = sorted(host_resources(subject.root, subject.host.tag))
        if subject.root.exists():  # destroy_root removes it: what is there could not be removed
            files = sorted(p.relative_to(subject.root).as_posix() for p in subject.root.rglob("*"))
            left.append(f"files in {subject.root}: {', '.join(files[:12]) or '(the root itself)'}")
        assert not problems and not left, f"the suite's host root left behind: {problems + left}"


@pytest.fixture
def stockade_host(stockade_subject: Subject) -> Host:
    return stockade_subject.host


@pytest.fixture(autouse=True)
def _stockade_requires(request: pytest.FixtureRequest) -> None:
    markers = list(request.node.iter_markers("requires"))
    if not markers:
        return
    declared: Declared = request.getfixturevalue("stockade_declared")
    for marker in markers:
        for what in marker.args:
            check_declared(declared, what, relaxable=bool(marker.kwargs.get("relaxable")))


def check_declared(declared: Declared, what: Feature | Restriction, *, relaxable: bool = False) -> None:
    """Skip as "not supported" unless the chosen backends declare ``what``."""
    if isinstance(what, Feature):
        if declared.known() and not declared.declares(what):
            not_supported(f"none of {declared.label} declares {what.value}")
        return
    iso = declared.name("isolation")
    if declared.classes.get("isolation") is None:
        return
    if what not in declared.restrictions:
        not_supported(f"isolation {iso!r} does not declare the restriction {what.value}")
    if relaxable and what not in declared.relaxable:
        not_supported(f"isolation {iso!r} cannot relax {what.value}")


def note(request: pytest.FixtureRequest, text: str) -> None:
    """Something the report must show next to the outcome (a partial or inconclusive check)."""
    request.node.user_properties.append((NOTE, text))


# --- the outcome log --------------------------------------------------------------------


def _class_key(node: Any) -> str:
    cls = node.getparent(pytest.Class) if hasattr(node, "getparent") else None
    return str(cls.nodeid) if cls is not None else str(getattr(node, "nodeid", ""))


def column_of(item: pytest.Item) -> str | None:
    m = item.get_closest_marker("conformance_column")
    if m is not None and m.args:
        return str(m.args[0])
    m = item.get_closest_marker("requires")
    if m is not None and m.args:
        what = m.args[0]
        if isinstance(what, Restriction):
            return f"restriction.{what.value}"
        return str(getattr(what, "value", what))
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``requires`` check first; ``known_failures = {"test_name[param]": "why"}`` on a
    suite class: strict xfail.

    The project's own run stays green on a gap it has reported, and turns red when the gap
    is fixed (so the entry goes); the matrix, generated without it, shows the failure.
    """
    wanted = set(config.getoption("--stockade-column", default=None) or ())
    if wanted:
        keep = [i for i in items if column_of(i) in wanted]
        config.hook.pytest_deselected(items=[i for i in items if column_of(i) not in wanted])
        items[:] = keep
    for item in items:
        # pytest sets fixtures up by scope, so the class-scoped subject would be built (and
        # skip "cannot run here") before the function-scoped ``requires`` check could say
        # "not supported": what is undeclared must be reported so even where nothing can run.
        names = getattr(item, "fixturenames", None)
        if isinstance(names, list) and "_stockade_requires" in names:
            names.remove("_stockade_requires")
            names.insert(0, "_stockade_requires")
        known = getattr(getattr(item, "cls", None), "known_failures", None)
        if isinstance(known, dict) and item.name in known:
            item.add_marker(pytest.mark.xfail(reason=f"known failure: {known[item.name]}", strict=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    column = column_of(item)
    if column is not None:
        report.user_properties.append((COLUMN, column))
        report.user_properties.append(("stockade_class", _class_key(item)))


class Recorder:
    """Collects one record per conformance test (registered per pytest config)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.time()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = {k: v for k, v in report.user_properties if k in (COLUMN, "stockade_class")}
        if COLUMN not in props:
            return
        nodeid = report.nodeid
        if report.when == "teardown" and report.failed:
            # a class-scoped teardown (the host root's leftover check) fails whichever test
            # ran last: it counts for the lifecycle column, not that test's
            props[COLUMN] = "lifecycle"
            nodeid = str(props.get("stockade_class", nodeid)) + "::host root teardown"
        rec = self.config.stash[_RECORDS].setdefault(
            nodeid,
            {
                "nodeid": nodeid,
                "column": props[COLUMN],
                "class": props.get("stockade_class", ""),
                "outcome": None,
                "why": "",
                "notes": [],
                "duration": 0.0,
            },
        )
        rec["duration"] += report.duration
        rec["notes"] = [str(v) for k, v in report.user_properties if k == NOTE]
        outcome: Outcome | None = None
        why = ""
        if hasattr(report, "wasxfail"):
            outcome, why = "fail", f"{report.wasxfail}"
        elif report.failed:
            outcome, why = "fail", _failure_line(report)
        elif report.skipped:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            outcome, why = classify_skip(reason)
        elif report.when == "call":
            outcome = "pass"
        if outcome is not None and rec["outcome"] != "fail":
            rec["outcome"], rec["why"] = outcome, why

    def results(self) -> dict[str, Any]:
        return {
            "subjects": self.config.stash[_SUBJECTS],
            "records": list(self.config.stash[_RECORDS].values()),
            "duration": time.time() - self.started,
        }

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        path = self.config.getoption("stockade_results", default=None)
        if path:
            Path(path).write_text(json.dumps(self.results(), indent=1, sort_keys=True))

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        from .matrix import Matrix

        data = self.results()
        if not data["records"]:
            return
        terminalreporter.section("stockade conformance")
        for line in Matrix.from_results([data]).to_text().splitlines():
            terminalreporter.write_line(line)


def _failure_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or report.longreprtext or "failed")
    text = text.split("\nassert ", maxsplit=1)[0]  # pytest's introspection of the assert adds nothing here
    prefix = "error in setup: " if report.when == "setup" else ""
    prefix = "error in teardown: " if report.when == "teardown" else prefix
    return prefix + " ".join(text.split())[:600]


@pytest.fixture(scope="session")
def stockade_beacons() -> Iterator[Any]:
    """The host's beacons (listener, abstract socket, process, keyring) the probe must not reach."""
    from .probe import host_beacons

    with host_beacons() as beacons:
        yield beacons


@pytest.fixture(scope="session")
def stockade_probe_baseline(stockade_beacons: Any) -> Any:
    """The probe run on the host itself, once per session: what this kernel can show allowed."""
    from .outcomes import cannot_run
    from .probe import ProbeError, probe_binary
    from .probing import probe_on_host

    try:
        path = probe_binary()
    except ProbeError as e:
        cannot_run(str(e))
    return probe_on_host(str(path), stockade_beacons, [r.value for r in Restriction])
