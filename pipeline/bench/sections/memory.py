"""Section `memory`: each stage's peak RSS in the workspace's last run."""

from __future__ import annotations

import json
from typing import Any

from pipeline.bench.harness import Progress, Targets

ABOUT = "peak RSS of each stage in the last run"
MINUTES = 0


def memory() -> dict[str, float]:
    """Peak RSS (MiB) of each stage's process tree in the last run (pipeline/core/tracking.py)."""
    from pipeline.core.catalog import RSS_FILE

    try:
        return json.loads(RSS_FILE.read_text())
    except (OSError, ValueError):
        return {}


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"memory": memory()}


def targets(r: dict[str, Any]) -> Targets:
    return []
