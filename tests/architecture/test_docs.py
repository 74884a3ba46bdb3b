"""The generated pages are what `tinyops docs` makes now: a changed docstring, error family or
bench result without `tinyops docs` fails here, so a page never drifts from its source."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.cli import generated_pages

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def at_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)


def test_generated_pages_are_current(at_repo: None) -> None:
    stale = [str(p) for p, text in generated_pages().items() if (REPO / p).read_text() != text]
    assert not stale, f"run `tinyops docs`: {', '.join(stale)} differ from their sources"


def test_the_readme_stays_short() -> None:
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines; move detail into docs/"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert pages and all(f"docs/{name}" in readme for name in pages), pages
    assert os.path.exists(REPO / "docs" / "mlflow-runs.png")
