"""Section `firmware`: the model built for each Cortex-M core with reference and CMSIS-NN kernels
and run under QEMU (pipeline/bench/firmware.py)."""

from __future__ import annotations

from typing import Any

from pipeline.bench.firmware import firmware, firmware_targets
from pipeline.bench.harness import Progress

ABOUT = "the model built per Cortex-M core, reference and CMSIS-NN kernels, under QEMU"
MINUTES = 4
targets = firmware_targets


def run(rounds: int, progress: Progress) -> dict[str, Any]:
    return {"firmware": firmware(progress)}
