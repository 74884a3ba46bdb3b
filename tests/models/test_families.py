"""Every torch family is a module-level class: it can be isinstance-checked and shows up under its
own name, and the torch-free arithmetic lives in a leaf (spec.py) that imports no family."""

from __future__ import annotations

import importlib

import pytest

from pipeline.models.architecture import FAMILIES, Architecture, build_model

SHAPES = {"cnn2d": (8, 8, 1), "custom": (8, 8, 1)}
USER_MODULE = "user_models.mobilenet_tiny:build"  # custom: the class lives in the user's module


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_each_family_is_a_module_level_class(arch: str) -> None:
    user = USER_MODULE if arch == "custom" else ""
    spec = Architecture(
        SHAPES.get(arch, (24, 3)), 4, (8, 8), arch=arch, hidden_size=8, stride=2, module=user
    )
    model = build_model(spec)
    where = user.partition(":")[0] or f"pipeline.models.{FAMILIES[arch]}"
    module = importlib.import_module(where)
    assert "<locals>" not in type(model).__qualname__
    assert isinstance(model, getattr(module, type(model).__name__))


def test_the_spec_leaf_imports_no_family() -> None:
    import ast
    from pathlib import Path

    import pipeline.models.spec as spec

    tree = ast.parse(Path(spec.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("pipeline.models")}, imported
