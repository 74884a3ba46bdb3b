"""model.arch custom: the project's own network from user_models/, refused clearly when the
params or the factory are wrong, before any training."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.core.config import parse_params
from pipeline.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CUSTOM = {"arch": "custom", "module": "user_models.mobilenet_tiny:build"}


@pytest.mark.parametrize(
    ("model", "train", "phrases"),
    [
        ({"arch": "custom"}, {}, ["model.module names the factory", "set it"]),
        ({"module": "user_models.x:f"}, {}, ["model.arch cnn2d", "set it to null"]),
        ({**CUSTOM, "module": "os:system"}, {}, ["'os:system'", "user_models.NAME:FUNCTION"]),
        ({"task": "reconstruction"}, {}, ["model.task is for model.arch custom"]),
        (CUSTOM, {"parallelism": "pipeline"}, ["no blocks tinyops can cut", "data or fsdp"]),
    ],
)
def test_bad_custom_params_name_the_key(model: dict, train: dict, phrases: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"model": model, "train": train})
    for phrase in phrases:
        assert phrase in str(err.value), str(err.value)


@pytest.fixture()
def own_user_models(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test's own user_models package, gone again afterwards with the project's back."""
    kept = {m: sys.modules.pop(m) for m in list(sys.modules) if m.split(".")[0] == "user_models"}
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [m for m in sys.modules if m.split(".")[0] == "user_models"]:
        del sys.modules[name]
    sys.modules.update(kept)


@pytest.mark.usefixtures("own_user_models")
def test_the_factory_builds_the_network_and_a_wrong_one_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from pipeline.models.architecture import build_model
    from pipeline.models.spec import Architecture

    (tmp_path / "user_models").mkdir()
    (tmp_path / "user_models/__init__.py").write_text("")
    source = (REPO / "user_models/mobilenet_tiny.py").read_text()
    (tmp_path / "user_models/mine.py").write_text(
        source + "\n\ndef not_a_model(s, n):\n    return 3\n"
    )
    monkeypatch.chdir(tmp_path)
    arch = Architecture((32, 32, 1), 10, (8,), arch="custom", module="user_models.mine:build")
    model = build_model(arch)
    assert model(torch.zeros(2, 32, 32, 1)).shape == (2, 10)
    assert Architecture.from_dict(arch.to_dict()) == arch
    with pytest.raises(ConfigError, match=r"returned a int; .* must return a torch.nn.*Module"):
        build_model(
            Architecture(
                (32, 32, 1), 10, (8,), arch="custom", module="user_models.mine:not_a_model"
            )
        )
    with pytest.raises(ConfigError, match=r"has no function 'buld' \(it has: .*build"):
        build_model(
            Architecture((32, 32, 1), 10, (8,), arch="custom", module="user_models.mine:buld")
        )
    with pytest.raises(ConfigError, match=r"No module named 'user_models.nope'"):
        build_model(Architecture((32, 32, 1), 10, (8,), arch="custom", module="user_models.nope:f"))


def test_a_bundled_familys_stored_architecture_is_unchanged() -> None:
    """model.pt stores the architecture: a bundled family's gains no keys, so its bytes stay."""
    from pipeline.models.spec import Architecture

    stored = Architecture((32, 32, 1), 10, (8,)).to_dict()
    assert "module" not in stored and "task" not in stored
