"""The bench's sections, one module each with `run(rounds, progress)`, `targets(results)`,
`ABOUT` and `MINUTES`; `SECTIONS` lists them in the order a full run takes them."""

from __future__ import annotations

from types import ModuleType

from pipeline.bench.harness import Section
from pipeline.bench.sections import (
    drift,
    families,
    federated,
    firmware,
    frameworks,
    latency,
    memory,
    nodes,
    overhead,
    paradigms,
    preflight,
    quantization,
    throughput,
)

ORDER: tuple[ModuleType, ...] = (
    throughput, quantization, latency, memory, overhead, paradigms, frameworks, firmware, preflight,
    families, drift, nodes, federated,
)  # fmt: skip


def _section(module: ModuleType) -> Section:
    name = module.__name__.rsplit(".", 1)[1]
    full = getattr(module, "IN_FULL_RUN", True)
    return Section(name, module.ABOUT, module.MINUTES, module.run, module.targets, full)


SECTIONS: dict[str, Section] = {s.name: s for s in map(_section, ORDER)}
