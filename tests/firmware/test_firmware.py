"""The firmware check: each Cortex-M bundle built with the real TensorFlow Lite Micro and run
under qemu-system-arm. Where the toolchain or the TFLite Micro source is missing, the tests that
need them skip naming what is missing (CI sets TINYOPS_REQUIRE_FIRMWARE, which fails instead)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import yaml

from pipeline.core.catalog import VariantInfo
from pipeline.core.config import Cpu, DeployParams, DeviceProfile, parse_params
from pipeline.deploy import mcu
from pipeline.deploy.fit import Firmware, assess
from pipeline.firmware import check, library, program, qemu, source, toolchain
from pipeline.firmware.cores import CORES, CPUS
from pipeline.tflite import tflm
from pipeline.tflite.litert import quantize_input
from tests.conftest import REPO

MCUS = (
    "raspberry_pi_pico",
    "arduino_nano_33_ble_sense",
    "stm32f746",
)  # M0+ ref, M4F and M7F CMSIS-NN
PROFILE = DeviceProfile(
    runtime="tflm",
    flash_bytes=1 << 20,
    ram_bytes=1 << 18,
    clock_mhz=64.0,
    cycles_per_mac=2.0,
    cpu="cortex-m4+fp",
    kernels="cmsis_nn",
    cycles_per_instruction=1.2,
)
FIGURES = VariantInfo(
    bytes=1000,
    file="x",
    litert_accuracy=0.99,
    macs=1_000_000,
    tflm_accuracy=0.99,
    tflm_arena_bytes=6656,
    ops=["CONV_2D"],
)


def _source_or_skip() -> tuple[source.TflmSource, Path]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    gaps = toolchain.missing()
    cache = source.cache_root(None)
    try:
        if gaps:
            raise source.SourceUnavailable(f"missing {', '.join(gaps)}")
        src = source.resolve(str(REPO / params["tflm"]["source"]), cache)
    except source.SourceUnavailable as exc:
        if os.environ.get("TINYOPS_REQUIRE_FIRMWARE"):
            pytest.fail(f"firmware check required here: {exc}")
        pytest.skip(f"firmware check unavailable: {exc}")
    return src, cache


def _figures(**changes: object) -> check.Figures:
    base = dict(
        core="cortex-m4+fp",
        kernels="cmsis_nn",
        machine="mps2-an386",
        build_type="release",
        compiler="gcc",
        qemu="qemu",
        tflm_commit="c",
        samples=200,
        identical=True,
        mismatch=None,
        flash_bytes=150_000,
        ram_bytes=8_300,
        static_ram_bytes=7_100,
        stack_peak_bytes=1_200,
        arena_bytes=6_928,
        arena_min_bytes=6_288,
        instructions_per_inference=1_280_000,
    )
    return check.Figures(**(base | changes))  # type: ignore[arg-type]


def test_every_core_a_profile_may_name_is_known_to_the_firmware_check() -> None:
    assert set(get_args(Cpu)) == set(CPUS)


def test_measured_figures_replace_the_estimates_in_the_fit_checks() -> None:
    c = assess("int8", b"\0" * 1000, FIGURES, PROFILE, DeployParams(), True, Firmware(_figures()))
    checks = {ch.name: ch for ch in c.checks}
    assert checks["flash"].value == 150_000 and checks["flash"].reason.startswith("measured")
    assert checks["ram"].value == 8_300 and "stack peak 1,200 B" in checks["ram"].reason
    assert checks["firmware"].passed and c.arena_measured == 6_288
    assert c.latency_ms == pytest.approx(1_280_000 * 1.2 / 64e3, abs=1e-4)
    assert c.firmware and c.firmware["estimated"]["flash_bytes"] == 1000 + 65536


def test_differing_outputs_fail_the_device_naming_the_sample() -> None:
    bad = _figures(identical=False, mismatch="sample 3 (of 200, 1 differ): firmware ...")
    c = assess("int8", b"\0" * 1000, FIGURES, PROFILE, DeployParams(), True, Firmware(bad))
    assert not c.fits
    assert [ch.reason for ch in c.checks if not ch.passed] == [
        "outputs differ from Python's TFLite Micro: sample 3 (of 200, 1 differ): firmware ..."
    ]


def test_without_a_firmware_check_the_estimates_stand_labelled() -> None:
    c = assess(
        "int8", b"\0" * 1000, FIGURES, PROFILE, DeployParams(), True, Firmware(skipped="why")
    )
    checks = {ch.name: ch for ch in c.checks}
    assert checks["flash"].reason.startswith("estimate") and checks["ram"].reason.startswith(
        "estimate"
    )
    assert "firmware" not in checks and c.firmware and c.firmware["skipped"] == "why"


def test_a_missing_toolchain_or_source_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(
        source.SourceUnavailable, match=r"nowhere\.tar\.gz does not exist.*git clone"
    ):
        source.resolve(str(tmp_path / "nowhere.tar.gz"), tmp_path)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(source.SourceUnavailable, match=r"junk\.tar\.gz could not be unpacked"):
        source.resolve(str(junk), tmp_path / "cache")
    assert not (tmp_path / "cache" / "tflm-src").exists() or not any(
        (tmp_path / "cache" / "tflm-src").iterdir()
    )  # nothing half-unpacked is left to be taken for a tree
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "arm-none-eabi-gcc (apt-get install gcc-arm-none-eabi)" in toolchain.missing()
    params = parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert mcu.skip_reason(params, "stm32f746").startswith("missing arm-none-eabi-gcc")
    assert "Xtensa" in mcu.skip_reason(params, "esp32_s3")


def _manifest(ws: Path, device: str) -> dict:
    return json.loads((ws / "deploy" / device / "manifest.json").read_text())


@pytest.mark.slow
@pytest.mark.firmware
def test_every_cortex_m_bundle_ran_byte_identical_under_qemu(pipeline_ws: Path) -> None:
    _source_or_skip()
    params = yaml.safe_load((pipeline_ws / "params.yaml").read_text())
    for device in MCUS:
        profile, manifest = params["devices"][device], _manifest(pipeline_ws, device)
        measured = manifest["firmware"]["measured"]
        assert measured["identical"] and measured["samples"] == 200, device
        assert (measured["core"], measured["kernels"]) == (profile["cpu"], profile["kernels"])
        assert measured["machine"] == CORES[profile["cpu"]].machine
        checks = {c["name"]: c for c in manifest["checks"]}
        assert (
            checks["flash"]["value"]
            == measured["flash_bytes"]
            < manifest["firmware"]["estimated"]["flash_bytes"]
        )
        assert checks["ram"]["value"] == measured["ram_bytes"]
        assert manifest["arena_measured_bytes"] == measured["arena_min_bytes"]
        assert measured["instructions_per_inference"] > 100_000
        assert (pipeline_ws / "deploy" / device / "main.cc").is_file()
    esp = _manifest(pipeline_ws, "esp32_s3")
    assert "Xtensa" in esp["firmware"]["skipped"]
    assert all(
        c["reason"].startswith("estimate") for c in esp["checks"] if c["name"] in ("flash", "ram")
    )
    # CMSIS-NN runs the same model in fewer instructions than the reference kernels
    pico, m4 = (_manifest(pipeline_ws, d)["firmware"]["measured"] for d in MCUS[:2])
    assert m4["instructions_per_inference"] < pico["instructions_per_inference"]


def _test_inputs(ws: Path, device: str, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The bundle's model, n int8 test inputs, and Python TFLite Micro's outputs for them."""
    manifest = _manifest(ws, device)
    model = (ws / "deploy" / device / "model.tflite").read_bytes()
    x = np.load(ws / "data/processed/x_test.npy")[:n]
    xq = quantize_input(x, manifest["input_scale"], manifest["input_zero_point"])
    return model, xq, tflm.predict(model, xq, manifest["arena_host_bytes"])


@pytest.mark.slow
@pytest.mark.firmware
def test_one_step_below_the_smallest_arena_fails_cleanly(pipeline_ws: Path, tmp_path: Path) -> None:
    src, cache = _source_or_skip()
    device = "raspberry_pi_pico"
    manifest = _manifest(pipeline_ws, device)
    _, xq, expected = _test_inputs(pipeline_ws, device, 1)
    lib = library.build(src, cache, "cortex-m0plus", "reference", "release", manifest["ops"])
    defines = (f"-DTINYOPS_ARENA_CAPACITY={manifest['arena_bytes']}",)
    bundle = pipeline_ws / "deploy" / device
    prog = program.build(bundle, lib, "cortex-m0plus", tmp_path, cache, 4096, defines)
    smallest = manifest["arena_measured_bytes"]
    ok = qemu.run(prog.elf, prog.machine, xq, 10, cache, arena_bytes=smallest)
    assert ok.exit_code == 0 and (ok.outputs == expected).all()
    below = qemu.run(prog.elf, prog.machine, xq, 10, cache, arena_bytes=smallest - 16)
    assert below.exit_code == qemu.ARENA_TOO_SMALL and "AllocateTensors failed" in below.console
    # Too big for the micro:bit's 16 KiB of RAM: the same ARMv6-M code runs on the M3 image
    big = program.build(bundle, lib, "cortex-m0plus", tmp_path / "big", cache, 32768, defines)
    assert (prog.machine, big.machine) == ("microbit", "mps2-an385")
    same = qemu.run(big.elf, big.machine, xq, 10, cache, count=True)
    assert (same.outputs == expected).all()


def _largest_weights(model: bytes) -> tuple[int, int]:
    """(offset, size) in the flatbuffer of the model's largest constant tensor."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model)
    interp.allocate_tensors()
    blobs = []
    for d in interp.get_tensor_details():
        try:
            blobs.append(interp.get_tensor(d["index"]).tobytes())
        except ValueError:
            continue  # no data (an activation)
    blob = max(blobs, key=len)
    assert model.count(blob) == 1
    return model.find(blob), len(blob)


def _corrupt_weights(bundle: Path, model: bytes, target: Path) -> None:
    """Invert 256 bytes of the model's largest weight tensor in the bundle's C array."""
    shutil.copytree(bundle, target)
    text = (target / "tinyops_model.cc").read_text()
    head, _, rest = text.partition("kModelData[] = {")
    array, _, tail = rest.partition("};")
    data = bytearray(int(v, 16) for v in re.findall(r"0x[0-9a-f]{2}", array))
    assert bytes(data) == model
    offset, size = _largest_weights(model)
    for i in range(offset + size // 2, offset + size // 2 + 256):
        data[i] ^= 0xFF
    rows = ",\n".join(
        "  " + ", ".join(f"0x{b:02x}" for b in data[i : i + 16]) for i in range(0, len(data), 16)
    )
    (target / "tinyops_model.cc").write_text(f"{head}kModelData[] = {{\n{rows},\n}};{tail}")


@pytest.mark.slow
@pytest.mark.firmware
def test_a_corrupted_model_array_is_caught(pipeline_ws: Path, tmp_path: Path) -> None:
    src, cache = _source_or_skip()
    device = "arduino_nano_33_ble_sense"
    manifest = _manifest(pipeline_ws, device)
    model, xq, expected = _test_inputs(pipeline_ws, device, 50)
    bad = tmp_path / "bundle"
    _corrupt_weights(pipeline_ws / "deploy" / device, model, bad)
    lib = library.build(src, cache, "cortex-m4+fp", "cmsis_nn", "release", manifest["ops"])
    build = check.Build("cortex-m4+fp", "cmsis_nn", "release", src.commit, 4096, 120.0)
    figures = check.verify(bad, lib, build, xq, expected, 0, tmp_path / "work", cache)
    assert not figures.identical
    assert re.match(
        r"sample \d+ \(of 50, \d+ differ\): firmware int8 logits \[", figures.mismatch or ""
    )


@pytest.mark.slow
@pytest.mark.firmware
def test_the_library_cache_is_reused(pipeline_ws: Path) -> None:
    src, cache = _source_or_skip()
    ops = _manifest(pipeline_ws, "stm32f746")["ops"]
    first = library.build(src, cache, "cortex-m7+fp", "cmsis_nn", "release", ops)
    stamp = first.path.stat().st_mtime_ns
    again = library.build(src, cache, "cortex-m7+fp", "cmsis_nn", "release", ops)
    assert (
        again.compiled == 0 and again.path == first.path and again.path.stat().st_mtime_ns == stamp
    )
    other = library.library_dir(cache, src, "cortex-m7+fp", "reference", "release")
    assert other != first.path.parent  # keyed by core, kernels, commit (and build, compiler)
