"""pt2e static int8 with tinyops's quantizer, for any number of inputs: the one path the
classifier, its streaming step model and the QAT-tuned network are converted by."""

from __future__ import annotations

import numpy as np


def quantize_static(  # type: ignore[no-untyped-def]
    model, samples: tuple, calibration: list[tuple[np.ndarray, ...]], keep_reference: bool = False
):
    """pt2e static int8 with tinyops's quantizer: export, observe `calibration` (one tuple of
    batch-1 inputs per call), convert. Returns (converted graph, quantizer, the calibrated float
    graph when keep_reference, else None)."""
    import copy

    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from pipeline.export.quantizer import make_quantizer

    quantizer = make_quantizer()
    graph = torch.export.export(model, samples).module()
    prepared = move_exported_model_to_eval(prepare_pt2e(graph, quantizer))
    with torch.no_grad():
        for inputs in calibration:
            prepared(*(torch.from_numpy(v) for v in inputs))
    reference = copy.deepcopy(prepared) if keep_reference else None
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    # The graph was captured from an eval-mode model (BN uses running stats, no dropout);
    # only the nn.Module flag still says training, and litert-torch reads that flag.
    for module in converted.modules():
        module.training = False
    return converted, quantizer, reference


def to_tflite(converted, samples: tuple, quantizer) -> bytes:  # type: ignore[no-untyped-def]
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    edge = litert_torch.convert(
        converted, samples, quant_config=QuantConfig(pt2e_quantizer=quantizer)
    )
    return bytes(edge.model_content())
