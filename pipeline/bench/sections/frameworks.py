"""Section `frameworks`: torch against Keras through the real stages (pipeline/bench/frameworks.py)."""

from __future__ import annotations

from typing import Any

from pipeline.bench.frameworks import framework_targets, frameworks
from pipeline.bench.harness import Progress

ABOUT = "torch against Keras through the real stages"
MINUTES = 8
targets = framework_targets


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"frameworks": frameworks(rounds, progress)}
