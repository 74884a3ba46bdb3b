"""train.parallelism → the Strategy that implements it (pipeline/training/strategy.py)."""

from __future__ import annotations

import importlib

from pipeline.training.strategy import Setting, Strategy

IMPLEMENTATIONS = {
    "data": "pipeline.training.data_parallel:DataParallel",
    "fsdp": "pipeline.training.fsdp:FullyShardedDataParallel",
    "pipeline": "pipeline.training.pipeline_parallel:PipelineParallel",
    "hybrid": "pipeline.training.pipeline_parallel:PipelineParallel",
}


def make_strategy(setting: Setting) -> Strategy:
    """The strategy train.parallelism names, imported only when it is used."""
    module, cls = IMPLEMENTATIONS[setting.plan.parallelism].split(":")
    return getattr(importlib.import_module(module), cls)(setting)
