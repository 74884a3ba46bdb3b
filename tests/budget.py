"""The suite's time, per wing, against its budget: printed at the end of every session, so a CI
log says which wing is over and by how much (docs/development.md). It reports and never fails a
test: time goals are measured, not asserted."""

from __future__ import annotations

import inspect
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

HOUSE = "house"
HOUSE_BUDGET_S = 12 * 60  # the whole suite as the house issue (25) left it
WING_BUDGET_S = 3 * 60  # what each later issue may add
# Later wings by where their tests live; everything else is the house's. A fixture's setup is
# charged to the wing that defines it, whichever test first asks for it: the session's first run
# (tests/conftest.py) and Keras run (tests/e2e/conftest.py) are the house's.
WINGS: dict[str, tuple[str, ...]] = {
    "federated (26)": ("tests/federated/",),
    "nodes (27)": ("tests/training/test_nodes.py", "tests/training/test_node_checks.py"),
    "team stack (28)": ("tests/team/", "tests/core/test_stores.py"),
    "own model (29)": (
        "tests/e2e/test_custom_model.py",
        "tests/e2e/test_given_tflite.py",
        "tests/models/test_custom.py",
        "tests/training/test_adopt.py",
        "tests/orchestration/test_preflight_cache.py",
    ),
    "field and drift (30)": ("tests/field/", "tests/monitor/", "tests/e2e/test_drift.py"),
}

_spent: dict[str, float] = defaultdict(float)
_tests: dict[str, set[str]] = defaultdict(set)
_moved = [0.0]  # fixture setup within the current test's setup, already charged to its wing
_nested: list[float] = []  # per fixture being set up: the time of fixtures set up inside it
_reported = [0.0]  # every report's duration: what the wings must add up to


def wing_of(nodeid: str) -> str:
    return next(
        (wing for wing, paths in WINGS.items() if nodeid.startswith(paths)),
        HOUSE,
    )


def _home(fixturedef: pytest.FixtureDef, root: Path = REPO) -> str | None:
    """The path (from the repo root) of the test file defining a fixture; None for pytest's and
    plugins' own."""
    try:
        path = Path(inspect.getsourcefile(fixturedef.func) or "").resolve()
    except TypeError:
        return None
    return path.relative_to(root).as_posix() if path.is_relative_to(root / "tests") else None


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef, request: pytest.FixtureRequest
) -> Iterator[None]:
    """A fixture's own setup time, less any fixture it asks for while running (getfixturevalue:
    that one is charged to its own wing); its declared dependencies are set up before it."""
    _nested.append(0.0)
    start = time.perf_counter()
    yield
    total = time.perf_counter() - start
    own = total - _nested.pop()
    if _nested:
        _nested[-1] += total
    home = _home(fixturedef, request.config.rootpath)
    if home is not None:
        _spent[wing_of(home)] += own
        _moved[0] += own


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    wing = wing_of(report.nodeid)
    _spent[wing] += report.duration - _moved[0]
    _reported[0] += report.duration
    _moved[0] = 0.0
    _tests[wing].add(report.nodeid)


def lines() -> list[str]:
    """One line per wing that ran: tests, minutes, budget, and whether it is over."""
    out = []
    for wing in (HOUSE, *WINGS):
        if wing not in _spent:
            continue
        budget = HOUSE_BUDGET_S if wing == HOUSE else WING_BUDGET_S
        spent = _spent[wing]
        verdict = "over" if spent > budget else "within"
        out.append(
            f"{wing:<22} {len(_tests[wing]):>4} tests {_mmss(spent):>7}  "
            f"budget {_mmss(budget):>5}  {verdict}"
        )
    total = sum(_spent.values())
    out.append(f"{'all':<22} {sum(map(len, _tests.values())):>4} tests {_mmss(total):>7}")
    if abs(total - _reported[0]) > 1:  # a fixture set up outside any test's report
        out.append(f"(the reports add up to {_mmss(_reported[0])}: the table is off by the rest)")
    return out


def _mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _spent:
        terminalreporter.section("time per wing (setup + call + teardown)")
        if terminalreporter.stats.get("deselected"):
            terminalreporter.write_line("(a part of the suite: the budgets are the whole suite's)")
        for line in lines():
            terminalreporter.write_line(line)
