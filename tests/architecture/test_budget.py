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


NESTED = {  # laid out as this suite is: the report registered by tests/conftest.py
    "tests/conftest.py": "import time\nimport pytest\nfrom tests import budget\n\n\n"
    "def pytest_configure(config):\n"
    "    config.pluginmanager.register(budget, 'tinyops-budget')\n\n\n"
    "@pytest.fixture(scope='session')\ndef house_run():\n    time.sleep(2.2)\n",
    "tests/federated/test_f.py": "import time\nimport pytest\n\n\n"
    "@pytest.fixture(scope='module')\ndef client_ws(request):\n"
    "    request.getfixturevalue('house_run')\n    time.sleep(1.2)\n\n\n"
    "def test_f(client_ws):\n    pass\n",
}


def test_a_fixture_asked_for_inside_another_is_charged_once_to_its_own_wing(
    tmp_path: Path,
) -> None:
    """The federated fixture asks for the house's run while it runs (getfixturevalue, as the
    custom model's does for the session's Keras run): 2 s to the house, 1 s to federated, and
    the wings add up to what the reports say."""
    import os
    import re
    import subprocess
    import sys

    for name, text in NESTED.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    wings = dict(re.findall(r"^(\S.*?)\s+\d+ tests\s+(\d+:\d\d)", out, re.MULTILINE))
    assert wings == {"house": "0:02", "federated (26)": "0:01", "all": "0:03"}, out
    assert "off by" not in out, out


def test_this_suite_reports_through_the_session_wide_plugin(request: pytest.FixtureRequest) -> None:
    """tests/conftest.py registers the report as a plugin (as the nested case above does), so
    the setup of session-scoped fixtures is charged too; a conftest's own hooks would miss it."""
    from tests import budget

    assert request.config.pluginmanager.get_plugin("tinyops-budget") is budget
