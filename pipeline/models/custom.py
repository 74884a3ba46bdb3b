"""model.arch custom: the project's own network, from a factory in its user_models/ folder
(model.module: user_models.NAME:FUNCTION). The factory takes the input shape ((H, W, C) images,
(T, C) series, batch first and channels last) and the class count, and returns the network;
everything after training treats it as any bundled family.

Importing the module runs its code, as any Python import does: name only modules you trust.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import catalog
from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from pipeline.models.spec import Architecture


def factory(module: str) -> Callable[..., Any]:
    """The function model.module names, imported from the project root's user_models/."""
    name, _, function = module.partition(":")
    root = str(Path.cwd())
    if not (Path(root) / catalog.USER_MODELS).is_dir():
        raise ConfigError(
            f"model.module {module}: no {catalog.USER_MODELS}/ folder in {root}; put your model "
            "there (run tinyops from the project root)."
        )
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        loaded = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"model.module {module}: {exc}.") from None
    found = getattr(loaded, function, None)
    if not callable(found):
        public = sorted(k for k, v in vars(loaded).items() if callable(v) and not k.startswith("_"))
        raise ConfigError(
            f"model.module {module}: {name} has no function {function!r} (it has: "
            f"{', '.join(public) or 'none'})."
        )
    return found


def call(arch: Architecture, kind: type, framework: str) -> Any:
    """The factory's network for this data, checked to be of the framework's model type."""
    made = factory(arch.module)(tuple(arch.input_shape), arch.num_classes)
    if not isinstance(made, kind):
        raise ConfigError(
            f"model.module {arch.module} returned a {type(made).__name__}; with model.framework "
            f"{framework} it must return a {kind.__module__}.{kind.__qualname__}."
        )
    return made


def build(arch: Architecture) -> nn.Module:
    """The torch network (weights from the current torch RNG, as the factory initialises them)."""
    from torch import nn

    return call(arch, nn.Module, "torch")
