"""tinyops's int8 quantizer: litert-torch's PT2EQuantizer plus the ops its stock rules leave in
float (float islands), so that sequence models quantize fully.

The stock quantizer annotates conv, linear, add, mul, pools and a few more. Unrolled RNN cells
and attention also need sub, tanh, sigmoid, softmax, matmul, rsqrt, mean and the slicing and
reshaping between them. After the stock rules run, every op left in float is annotated here:
- compute ops get their own int8 output observer;
- tanh, sigmoid and softmax get TFLite's fixed output scales (1/128; 1/256 with zero point
  -128), which its int8 kernels require;
- shape ops (slice, transpose, reshape, ...) share their input's scale, as TFLite requires;
- an input already quantized by its producer shares that producer's parameters, so no second
  observer (and no requantize) is put on the edge.
"""

from __future__ import annotations

import operator
from typing import Any, ClassVar


def _op_tables() -> tuple[set[Any], dict[Any, tuple[float, int]], set[Any]]:
    import torch

    a = torch.ops.aten
    compute = {
        a.sub.Tensor, a.mul.Tensor, a.add.Tensor, a.matmul.default, a.bmm.default,
        a.rsqrt.default, a.mean.dim, a.relu.default,
    }  # fmt: skip
    fixed = {
        a.tanh.default: (1 / 128, 0),
        a.sigmoid.default: (1 / 256, -128),
        a.softmax.int: (1 / 256, -128),
        a._softmax.default: (1 / 256, -128),
    }
    shared = {
        a.slice.Tensor, a.select.int, a.transpose.int, a.permute.default, a.view.default,
        a.reshape.default, a.unsqueeze.default, a.squeeze.dim, a.contiguous.default,
        a.clone.default, a.flatten.using_ints, a.pad.default, a.constant_pad_nd.default,
        a.max_pool1d.default,
    }  # fmt: skip
    return compute, fixed, shared


def _annotated(node: Any) -> bool:
    note = node.meta.get("quantization_annotation")
    return note is not None and note._annotated


def _is_float(node: Any) -> bool:
    import torch
    from torch.fx import Node

    value = node.meta.get("val") if isinstance(node, Node) else None
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _input_spec(node: Any, own: Any) -> Any:
    """Share the producer's parameters where it already quantizes its output."""
    from torchao.quantization.pt2e.quantizer import SharedQuantizationSpec

    note = node.meta.get("quantization_annotation")
    return SharedQuantizationSpec(node) if note and note.output_qspec is not None else own


def _fixed_spec(scale: float, zero_point: int) -> Any:
    import torch
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    return FixedQParamsQuantizationSpec(
        dtype=torch.int8, scale=scale, zero_point=zero_point, quant_min=-128,
        quant_max=127, qscheme=torch.per_tensor_affine,
    )  # fmt: skip


def _annotate_rest(model: Any, act_in: Any, act_out: Any) -> None:
    """Annotate every call the stock rules left in float (see the module docstring)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    compute, fixed, shared = _op_tables()
    for node in model.graph.nodes:
        if node.op != "call_function" or _annotated(node) or operator.getitem == node.target:
            continue
        if node.target in compute or node.target in fixed:
            inputs = {a: _input_spec(a, act_in) for a in node.args if _is_float(a)}
            out = _fixed_spec(*fixed[node.target]) if node.target in fixed else act_out
        elif node.target in shared and _is_float(node.args[0]):
            src = node.args[0]
            inputs = {src: _input_spec(src, act_in)}
            out = SharedQuantizationSpec((src, node))
        else:
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map=inputs, output_qspec=out, _annotated=True
        )


def make_quantizer(is_qat: bool = False) -> Any:
    """Static int8: per-channel symmetric weights, int8 activations, every op annotated; with
    is_qat, fake-quantize modules that training sees through."""
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as rules
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    class TinyopsQuantizer(PT2EQuantizer):
        # litert-torch's QAT conv+BatchNorm rules hand torch.export a function and fail with
        # this torchao; without them QAT fake-quantizes conv outputs before BatchNorm (exact for
        # the BN-free transformer and RNNs, an approximation of the folded conv otherwise).
        STATIC_QAT_ONLY_OPS: ClassVar[list[str]] = []

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            model = super().annotate(model)
            config = self.global_config
            _annotate_rest(
                model, rules.get_input_act_qspec(config), rules.get_output_act_qspec(config)
            )
            return model

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False, is_qat=is_qat)
    return TinyopsQuantizer().set_global(config)
