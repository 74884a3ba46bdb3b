"""Section `federated`: federated against centralized training on digits and JapaneseVowels
(pipeline/bench/federated.py). Run only with --only: 42 runs through the real stages."""

from __future__ import annotations

from typing import Any

from pipeline.bench.federated import federated, federated_targets
from pipeline.bench.harness import Progress

ABOUT = "federated (FedAvg, FedProx, FedAvgM; IID to by-class) against centralized, 3 seeds"
MINUTES = 45
IN_FULL_RUN = False
targets = federated_targets


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"federated": federated(progress)}
