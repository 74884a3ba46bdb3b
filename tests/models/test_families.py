"""Every torch family is a module-level class: it can be isinstance-checked and shows up under its
own name, and the torch-free arithmetic lives in a leaf (spec.py) that imports no family."""

from __future__ import annotations

import importlib

import pytest

from pipeline.models.architecture import FAMILIES, Architecture, build_model

SHAPES = {"cnn2d": (8, 8, 1)}


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_each_family_is_a_module_level_class(arch: str) -> None:
    spec = Architecture(SHAPES.get(arch, (24, 3)), 4, (8, 8), arch=arch, hidden_size=8, stride=2)
    model = build_model(spec)
    module = importlib.import_module(f"pipeline.models.{FAMILIES[arch]}")
    assert "<locals>" not in type(model).__qualname__
    assert isinstance(model, getattr(module, type(model).__name__))


def test_the_spec_leaf_imports_no_family() -> None:
    import ast
    from pathlib import Path

    import pipeline.models.spec as spec

    tree = ast.parse(Path(spec.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("pipeline.models")}, imported
