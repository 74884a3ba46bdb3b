"""Model preflight: before the first epoch, will this model, on each device of params.yaml, run
fully int8 in TensorFlow Lite Micro, and fit? Answered in seconds from the untrained network
(sizes do not depend on weights) calibrated on random inputs: export, the int8 audit, the op
kernels of the TensorFlow Lite Micro tree the firmware is built from, the arena TensorFlow Lite
Micro itself measures, and the flash, RAM and latency estimates deploy uses.

The machine checks (MLflow store, disk, cores) live in pipeline/core/preflight.py; this part
needs the exporter and the deploy estimates, which sit above core.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import atomic, catalog
from pipeline.core.config import DeviceProfile, Params
from pipeline.core.errors import ConfigError
from pipeline.orchestration import freshness
from pipeline.orchestration.preflight_firmware import COLD_LIBRARY, Measured, cold_reason, measure

CALIBRATION_SAMPLES = 8
# Why an op cannot run, and what to use instead: the message a user acts on.
REMEDIES = {
    "GELU": "TensorFlow Lite Micro has no GELU kernel; use ReLU (as the bundled transformer "
    "does) or nn.Hardswish (TFLite Micro's HARD_SWISH)",
    "UNIDIRECTIONAL_SEQUENCE_LSTM": "nn.LSTM does not quantize to int8 here; unroll the cell "
    "(model.arch lstm does)",
    "UNIDIRECTIONAL_SEQUENCE_RNN": "nn.RNN / nn.GRU do not quantize to int8 here; unroll the "
    "cell (model.arch gru does)",
}
# Module classes whose ops the quantizer leaves float, and what quantizes instead.
FLOAT_REMEDIES = {
    "LayerNorm": "nn.LayerNorm stays a float island; write it from mean, sub, mul and rsqrt "
    "(pipeline/models/transformer.py does)",
    "MultiheadAttention": "write attention out (reshape, matmul, softmax) as "
    "pipeline/models/transformer.py does",
    "GRU": "nn.GRU does not quantize; unroll the cell (model.arch gru does)",
    "LSTM": "nn.LSTM does not quantize; unroll the cell (model.arch lstm does)",
}
_RESOLVER = "tensorflow/lite/micro/micro_mutable_op_resolver.h"
_CMSIS = "tensorflow/lite/micro/kernels/cmsis_nn"


@dataclass
class Graph:
    """What the untrained network exports to: the same for every device."""

    exported: bool
    error: str = ""
    int8_bytes: int = 0
    ops: list[str] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)  # "OP (layer a.b): why"
    no_kernel: list[str] = field(default_factory=list)  # "OP (layer a.b): why"
    reference_only: list[str] = field(default_factory=list)  # ops without a CMSIS-NN kernel
    arena_bytes: int | None = None
    macs: int = 0
    streaming: bool = False
    kernels_from: str = ""


@dataclass
class DeviceAnswer:
    device: str
    runtime: str
    fits: bool
    reasons: list[str]
    flash_bytes: int
    ram_bytes: int
    latency_ms: float
    sizes: str  # "estimate", with why


def cache_key(params: Params, fp: freshness.Fingerprint) -> str:
    """The model, its export and the devices (params), the code that builds them, and the data
    (its shapes: a series' length can change with it)."""
    sections = ("prepare", "model", "export", "devices", "deploy", "tflm")
    dumped = params.model_dump(mode="json")
    text = json.dumps({s: dumped[s] for s in sections}, sort_keys=True) + fp.code + fp.data
    return hashlib.sha256(text.encode()).hexdigest()


def input_spec(params: Params) -> tuple[tuple[int, ...], list[str]]:
    """Input shape and classes: prepare's meta.json when it is of this source, else the data."""
    from pipeline.data.datasets import load_dataset
    from pipeline.data.prepare import load_meta

    if catalog.META_FILE.is_file():
        meta = load_meta()
        if meta.source == params.prepare.source:
            return tuple(meta.input_shape), list(meta.classes)
    ds = load_dataset(params.prepare)
    return tuple(ds.x.shape[1:]), list(ds.classes)


def _modules(tensor: str) -> list[tuple[str, str]]:
    """(class, attribute) of each module on the path litert-torch writes into a tensor's name:
    'M/torch.nn.modules.container.Sequential_ffn/torch.nn.modules.activation.GELU_1;2'
    → [(Sequential, ffn), (GELU, 1)]."""
    parts = [p.split(";")[0].split(".")[-1] for p in tensor.split("/")[1:]]
    return [(c, a) for c, _, a in (p.partition("_") for p in parts) if a]


def layer_of(tensor: str) -> str:
    """The layer's attribute path, e.g. ffn.1 ("" when the name holds no module)."""
    return ".".join(a for _, a in _modules(tensor))


def float_islands(info: Any) -> list[str]:
    """The layers whose ops stay float, one line each with the ops, why and what to do where
    tinyops knows; model-level problems (float input, dynamic range) as the audit words them."""
    from pipeline.tflite.flatbuffer import int8_violations

    general: list[str] = []
    layers: dict[str, tuple[list[str], str]] = {}
    for problem in int8_violations(info):
        m = re.match(r"op (\d+) (\w+)", problem)
        if not m:
            general.append(problem)
            continue
        op = info.ops[int(m.group(1))]
        tensor = info.tensors[op.outputs[0]].name if op.outputs else ""
        classes = [c for c, _ in _modules(tensor)]
        why = next((FLOAT_REMEDIES[c] for c in reversed(classes) if c in FLOAT_REMEDIES), "")
        ops, _ = layers.setdefault(layer_of(tensor), ([], why))
        if m.group(2) not in ops:
            ops.append(m.group(2))
    lines = [
        (f"layer {layer} ({', '.join(ops)})" if layer else ", ".join(ops))
        + " stays float"
        + (f": {why}" if why else "")
        for layer, (ops, why) in layers.items()
    ]
    return general + lines


def export_untrained(params: Params, shape: tuple[int, ...], classes: list[str]) -> bytes:
    """The seeded, untrained network to int8 in its framework's exporter, calibrated on random
    normalised inputs (only that framework is imported: they clash in one process)."""
    from pipeline.models.architecture import architecture_for

    arch = architecture_for(params, shape, len(classes), classes)
    rng = np.random.default_rng(params.train.seed)
    calibration = rng.normal(size=(CALIBRATION_SAMPLES, *shape)).astype(np.float32)
    return EXPORTERS[params.model.trainer](arch, params.train.seed, calibration)


def _torch_int8(arch: Any, seed: int, calibration: np.ndarray) -> bytes:
    import warnings

    import torch

    from pipeline.export.convert import _quiet_litert, convert_int8
    from pipeline.models.architecture import build_model

    _quiet_litert()
    torch.manual_seed(seed)
    model = build_model(arch).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_int8(model, torch.zeros((1, *arch.input_shape)), calibration)


def _keras_int8(arch: Any, seed: int, calibration: np.ndarray) -> bytes:
    import keras

    from pipeline.export.keras_convert import convert_model
    from pipeline.models.architecture import build_keras_model

    keras.utils.set_random_seed(seed)
    model = build_keras_model(arch)
    return convert_model(model, arch.input_shape, calibration, ("int8",))["int8"]


def _given_int8(arch: Any, seed: int, calibration: np.ndarray) -> bytes:
    """model.arch tflite: the file itself, trained or not: nothing to export."""
    from pipeline.training.adopt import read_file

    return read_file(Path(arch.path))


EXPORTERS = {"torch": _torch_int8, "keras": _keras_int8, "tflite": _given_int8}


def tflm_kernels(params: Params) -> tuple[set[str] | None, set[str], str]:
    """MicroMutableOpResolver's methods (one per op with a kernel) and the ops with a CMSIS-NN
    kernel, from the tree the firmware is built from; no tree: None, and running the graph in
    the Python TensorFlow Lite Micro interpreter decides instead."""
    from pipeline.deploy.bundle import INT8_KERNELS
    from pipeline.firmware.source import SourceUnavailable, cache_root, resolve

    try:
        tree = resolve(params.tflm.source, cache_root(params.tflm.cache_dir)).tree
    except SourceUnavailable:
        return None, set(INT8_KERNELS), "the Python TensorFlow Lite Micro interpreter"
    methods = set(re.findall(r"TfLiteStatus (Add\w+)\(", (tree / _RESOLVER).read_text()))
    cmsis = {op for op, header in INT8_KERNELS.items()
             if (tree / _CMSIS / header.replace(".h", ".cc")).is_file()}  # fmt: skip
    return methods, cmsis, "the TensorFlow Lite Micro tree of tflm.source"


def first_layers(info: Any) -> dict[str, str]:
    """Each op's first layer, named from its output tensor."""
    layers: dict[str, str] = {}
    for op in info.ops:
        if op.outputs and op.name not in layers:
            layers[op.name] = layer_of(info.tensors[op.outputs[0]].name) or "?"
    return layers


def audit(params: Params, int8: bytes) -> Graph:
    """The int8 audit, the kernels and the arena of the exported graph."""
    from pipeline.deploy.bundle import resolver_method
    from pipeline.tflite import tflm
    from pipeline.tflite.flatbuffer import count_macs, read_model

    info = read_model(int8, "preflight")
    layers = first_layers(info)
    graph = Graph(True, int8_bytes=len(int8), ops=sorted(layers), macs=count_macs(info))
    graph.float_ops = float_islands(info)
    methods, cmsis, graph.kernels_from = tflm_kernels(params)
    graph.reference_only = sorted(op for op in layers if op not in cmsis)
    missing = [op for op in layers if methods is not None and resolver_method(op) not in methods]
    if not missing:
        graph.arena_bytes = tflm.measure_arena_bytes(
            int8, params.evaluate.arena_max_bytes, params.evaluate.arena_granularity
        )
        if not graph.arena_bytes:  # no tree to read, or a kernel that fails at run time
            missing = [op for op in layers if op in REMEDIES] or ["(unknown)"]
    graph.no_kernel = [
        f"{op} (layer {layers.get(op, '?')}): "
        + REMEDIES.get(op, "TensorFlow Lite Micro has no kernel for it")
        for op in missing
    ]
    return graph


def answer(
    graph: Graph, device: str, profile: DeviceProfile, params: Params, sizes: Sizes
) -> DeviceAnswer:
    """Fits or not, and why, from the graph and the device's budgets (`sizes`: the firmware's
    flash and RAM, or why they are estimates)."""
    from pipeline.deploy.bundle import reserved_arena

    deploy, reasons = params.deploy, []
    runtime = profile.runtime
    arena = graph.arena_bytes or 0
    flash = graph.int8_bytes + deploy.runtime_flash_bytes[runtime]
    ram = reserved_arena(arena) + deploy.runtime_ram_bytes[runtime]
    label = f"estimate: model + {runtime} runtime; arena measured by TensorFlow Lite Micro + margin"
    if isinstance(sizes, Measured):
        flash, ram, label = sizes.flash_bytes, sizes.ram_bytes, sizes.sizes
    elif runtime == "tflm":
        label += f" ({sizes})"
    latency = graph.macs * profile.cycles_per_mac / (profile.clock_mhz * 1e3)
    if not graph.exported:
        reasons.append(f"does not export: {graph.error}")
    if runtime == "tflm":
        reasons += [f"not fully int8: {p}" for p in graph.float_ops]
        reasons += [f"no TFLite Micro kernel: {p}" for p in graph.no_kernel]
    if flash > profile.flash_bytes:
        reasons.append(f"flash {flash:,} B > budget {profile.flash_bytes:,} B")
    if ram > profile.ram_bytes:
        reasons.append(f"RAM {ram:,} B > budget {profile.ram_bytes:,} B")
    if latency > profile.max_latency_ms:
        reasons.append(f"latency {latency:.1f} ms > budget {profile.max_latency_ms:g} ms")
    return DeviceAnswer(device, runtime, not reasons, reasons, flash, ram, round(latency, 3), label)


Sizes = Measured | str  # the firmware's figures, or why there are none


def device_sizes(
    params: Params, int8: bytes, graph: Graph, spec: tuple[tuple[int, ...], list[str]]
) -> dict[str, Sizes]:
    """Per device, the firmware's flash and RAM where its library is cached, else why not. The
    builds run side by side, one per core (each is a compiler or QEMU process at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.firmware.library import jobs

    runs = graph.arena_bytes and not (graph.float_ops or graph.no_kernel)
    out: dict[str, Sizes] = {}
    for device in sorted(params.devices):
        why = cold_reason(params, device, graph.ops) if runs else "it does not run int8 in TFLM"
        if why is not None:
            out[device] = why

    def one(device: str) -> Sizes:
        try:
            return measure(params, device, int8, graph.arena_bytes or 0, spec, graph.ops)
        except Exception as exc:  # the estimates stand, saying why
            return f"the firmware build failed: {type(exc).__name__}: {exc}"[:300]

    todo = [d for d in sorted(params.devices) if d not in out]
    with ThreadPoolExecutor(max(1, min(jobs(), len(todo)))) as pool:
        out |= dict(zip(todo, pool.map(one, todo), strict=True))
    return out


def examine(params: Params) -> dict[str, Any]:
    """The whole answer, as metrics/preflight.json holds it. Data that cannot be read skips it:
    prepare says what is wrong with it, under the run's own MLflow record."""
    from pipeline.core.errors import TinyopsError

    model = params.model
    report: dict[str, Any] = {
        "model": model.module or model.path or model.arch,
        "framework": model.trainer,
    }
    try:
        shape, classes = input_spec(params)
    except TinyopsError as exc:
        return report | {"skipped": f"the data could not be read ({str(exc).splitlines()[0]})"}
    report |= {"input_shape": list(shape), "classes": len(classes)}
    int8 = b""
    try:
        int8 = export_untrained(params, shape, classes)
        graph = audit(params, int8)
    except ConfigError:
        raise
    except Exception as exc:  # the converter's own words name the op that failed
        text = str(exc).strip().splitlines()
        graph = Graph(False, error=f"{type(exc).__name__}: {text[0] if text else ''}"[:400])
    graph.streaming = model.arch in ("gru", "lstm")
    sizes = device_sizes(params, int8, graph, (shape, classes)) if graph.exported else {}
    answers = [answer(graph, d, p, params, sizes.get(d, "the model did not export"))
               for d, p in sorted(params.devices.items())]  # fmt: skip
    report["graph"] = asdict(graph)
    report["devices"] = {a.device: asdict(a) for a in answers}
    report["fits"] = [a.device for a in answers if a.fits]
    return report


def cacheable(report: dict[str, Any]) -> bool:
    """Not an answer to ask again: unreadable data (asked once it is fixed) and estimates made
    for want of a cached library (measured once the library is warm) are not kept."""
    if "skipped" in report:
        return False
    return not any(COLD_LIBRARY in a["sizes"] for a in report["devices"].values())


def run_preflight(params: Params) -> tuple[dict[str, Any], bool]:
    """examine(), cached by the model, devices and code, written to metrics/preflight.json;
    and whether the answer came from the cache."""
    key = cache_key(params, freshness.fingerprint(params))
    cached = catalog.PREFLIGHT_CACHE / f"{key}.json"
    hit = cached.is_file()
    report = json.loads(cached.read_text()) if hit else examine(params)
    if not hit and cacheable(report):
        atomic.write_json(cached, report)
    atomic.write_json(catalog.PREFLIGHT_METRICS, report)
    return report, hit


def refusal(report: dict[str, Any]) -> str | None:
    """Why no device can take the model (None: one can, or preflight was skipped)."""
    if "skipped" in report or report["fits"]:
        return None
    lines = [f"{d}: {'; '.join(a['reasons'])}" for d, a in report["devices"].items()]
    return (
        f"preflight: no device in params.yaml can take model {report['model']}:\n  "
        + "\n  ".join(lines)
        + "\nFix the model (or the devices), or run anyway with --ignore-preflight."
    )


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The table: device, runtime, fits, flash, RAM, latency, why."""
    out = []
    for name, a in report.get("devices", {}).items():
        why = "; ".join(a["reasons"]) or "fits"
        out.append((name, a["runtime"], "yes" if a["fits"] else "NO", f"{a['flash_bytes']:,}",
                    f"{a['ram_bytes']:,}", f"{a['latency_ms']:g}", why))  # fmt: skip
    return out
