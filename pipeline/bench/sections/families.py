"""Section `families`: every sequence family on both bundled datasets through the real stages
(pipeline/bench/families.py), also written as bench/families.md. Run only with --only."""

from __future__ import annotations

from typing import Any

from pipeline.bench.families import families, family_table, family_targets
from pipeline.bench.harness import Progress
from pipeline.core import atomic, catalog

ABOUT = "every sequence family on both bundled datasets through the real stages"
MINUTES = 25
IN_FULL_RUN = False
targets = family_targets


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    out = {"families": families(progress)}
    atomic.write_bytes(catalog.FAMILIES_TABLE, family_table(out).encode() + b"\n")
    return out
