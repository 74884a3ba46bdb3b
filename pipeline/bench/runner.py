"""`tinyops bench`: what the pipeline costs, measured side by side in one run.

Configurations that are compared run interleaved (A B C A B C …, a warm-up round first) so that
machine noise falls on all of them alike; the table gives medians, min–max and ratios, and a
summary line per target says PASS or FAIL. Results go to bench/results.json with the machine.
How a section measures is the harness's (pipeline/bench/harness.py); what each one measures is
its own module (pipeline/bench/sections/).
"""

from __future__ import annotations

import json
from typing import Any

from pipeline.bench.harness import RESULTS, Progress, machine
from pipeline.bench.sections import SECTIONS
from pipeline.core import atomic


def listing() -> str:
    """`tinyops bench --list`: each section, its expected duration and what it measures."""
    rows = [
        f"{name:<13} ~{s.minutes:>2g} min{'' if s.in_full_run else ' (--only)':<9}  {s.about}"
        for name, s in SECTIONS.items()
    ]
    return "\n".join(rows)


def bench(rounds: int = 5, on_progress: Progress = print) -> dict[str, Any]:
    """Every section of a full run, side by side; written to bench/results.json with the machine."""
    results: dict[str, Any] = {"machine": machine(), "rounds": rounds, "targets": []}
    for name, section in SECTIONS.items():
        if section.in_full_run:
            results |= section.run(rounds, on_progress)
            results["targets"] += [t | {"section": name} for t in section.targets(results)]
    atomic.write_json(RESULTS, results)
    return results


def bench_only(section: str, rounds: int, on_progress: Progress = print) -> dict[str, Any]:
    """One section (`tinyops bench --only NAME`), merged into bench/results.json beside an earlier
    full run's results; that section's targets are replaced (a renamed target goes too)."""
    try:
        results = json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        results = {"machine": machine(), "rounds": rounds, "targets": []}
    chosen = SECTIONS[section]
    results |= chosen.run(rounds, on_progress)
    new = [t | {"section": section} for t in chosen.targets(results)]
    results[f"{section}_rounds"] = rounds
    names = {t["target"] for t in new}
    kept = [t for t in results.get("targets", [])
            if t["target"] not in names and t.get("section") != section]  # fmt: skip
    results["targets"] = kept + new
    atomic.write_json(RESULTS, results)
    return results
