"""The per-wing time report (tests/budget.py) names real test paths and charges each test once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.budget import HOUSE, WINGS, _home, wing_of

REPO = Path(__file__).resolve().parents[2]


def test_every_wing_names_test_paths_that_exist() -> None:
    for wing, paths in WINGS.items():
        for path in paths:
            assert (REPO / path).exists(), f"{wing}: {path} is gone (tests/budget.py)"


def test_a_test_is_charged_to_its_wing_or_else_to_the_house() -> None:
    assert wing_of("tests/federated/test_federated.py::test_x") == "federated (26)"
    assert wing_of("tests/training/test_nodes.py::test_x[a]") == "nodes (27)"
    assert wing_of("tests/training/test_launcher.py::test_x") == HOUSE
    assert wing_of("tests/e2e/test_pipeline.py::test_x") == HOUSE


def test_a_fixture_is_charged_to_the_wing_that_defines_it(request: pytest.FixtureRequest) -> None:
    defs = request._fixturemanager.getfixturedefs  # pytest's own lookup
    node = request.node
    assert _home(defs("tmp_path", node)[-1]) is None  # pytest's: the asking test's wing
    assert _home(defs("pipeline_ws", node)[-1]) == "tests/conftest.py"
    assert wing_of(_home(defs("pipeline_ws", node)[-1])) == HOUSE
