"""The feature extras (requirements-extras.lock): libraries that only some features need, kept
out of the quickstart's install. A command that needs one calls `require` before any work, so a
missing extra is one clear message naming how to install it, not an ImportError mid-run."""

from __future__ import annotations

import importlib.util

from pipeline.core.errors import ConfigError

EXTRAS_LOCK = "requirements-extras.lock"


def require(module: str, feature: str) -> None:
    """Fail clearly unless `module` can be imported (it is not imported here: no start-up cost)."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(
            f"{feature} needs the Python package '{module}', one of the feature extras "
            f"({EXTRAS_LOCK}), which `make run` does not install. Install them with "
            f"`make extras` (or `pip install --no-deps -r {EXTRAS_LOCK}` in the venv)."
        )
