"""Quantization-aware fine-tuning (export.qat), for when post-training quantization loses more
than evaluate.max_int8_drop on the validation split.

torchao's pt2e QAT with tinyops's quantizer: the trained model is exported in training mode at
a fixed batch, fake-quantize modules are inserted where int8 will round, and it is fine-tuned for
export.qat_epochs on the training split (one process, seeded, deterministic). The fine-tuned
weights go back into the float network, which the usual batch-1 int8 conversion then calibrates
and converts, so the deployed graph is the same shape as without QAT.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np


class QatDiverged(RuntimeError):
    """Fine-tuning produced a non-finite loss; post-training int8 stays."""


def fine_tune(  # type: ignore[no-untyped-def]
    model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int, seed: int, loss_fn
):
    """A copy of `model` whose weights were trained through int8 fake quantization, on the
    task's loss `loss_fn(out, x, y)`."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from pipeline.export.quantizer import make_quantizer

    torch.manual_seed(seed)
    batch = min(batch, len(x))
    sample = torch.zeros((batch, *x.shape[1:]))
    graph = torch.export.export(copy.deepcopy(model).train(), (sample,)).module()
    prepared = prepare_qat_pt2e(graph, make_quantizer(is_qat=True))
    optimizer = torch.optim.Adam(prepared.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch + 1, batch):  # fixed batch: the graph's shape
            take = order[start : start + batch]
            xb, yb = torch.from_numpy(x[take]), torch.from_numpy(y[take])
            loss = loss_fn(prepared(xb), xb, yb)
            if not torch.isfinite(loss):
                raise QatDiverged(f"QAT loss became {loss.item()} in epoch {_ + 1}")
            optimizer.zero_grad()
            loss.backward()
            # rsqrt and divisions through fake-quantized values can spike: clip, or Adam blows up
            torch.nn.utils.clip_grad_norm_(prepared.parameters(), 1.0)
            optimizer.step()
    return _weights_back(model, prepared.state_dict())


def _weights_back(model: Any, tuned: dict[str, Any]):  # type: ignore[no-untyped-def]
    """The float network with the fine-tuned parameters and BatchNorm statistics."""
    out = copy.deepcopy(model)
    wanted = out.state_dict()
    missing = [k for k in wanted if k not in tuned]
    if missing:
        raise RuntimeError(f"QAT graph lost parameters {missing[:5]}; cannot copy weights back")
    out.load_state_dict({k: tuned[k].detach().clone() for k in wanted})
    return out.eval()
