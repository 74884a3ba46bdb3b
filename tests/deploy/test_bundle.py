"""Bundles: every file listed with its sha256 in the manifest, and any change refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.catalog import Manifest
from pipeline.core.errors import ArtifactError
from pipeline.deploy.bundle import (
    CPP_HEADER,
    CPP_SOURCE,
    MANIFEST_FILE,
    build_bundle,
    cpp_sources,
    reserved_arena,
    resolver_method,
    verify_bundle,
)

MODEL = bytes(range(256)) * 3
INFO = {
    "ops": ["CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "PADV2"],
    "input_shape": [8, 8, 1],
    "labels": ["zero", 'quote"d'],
    "arena_measured": 6656,
    "arena_bytes": reserved_arena(6656),
    "input_scale": 0.0104,
    "input_zero_point": -50,
    "output_scale": 0.1,
    "output_zero_point": 3,
}


def _manifest() -> Manifest:
    return Manifest.model_validate(
        {
            "device": "dev",
            "description": "a test board",
            "runtime": "tflm",
            "variant": "int8",
            "model_file": "model.tflite",
            "model_sha256": __import__("hashlib").sha256(MODEL).hexdigest(),
            "model_bytes": len(MODEL),
            "accuracy": 0.99,
            "latency_ms": 1.0,
            "latency_kind": "estimate",
            "checks": [],
            "arena_bytes": INFO["arena_bytes"],
            "arena_measured_bytes": INFO["arena_measured"],
            "normalization": {"mean": [0.0], "std": [1.0]},
            "labels": INFO["labels"],
            "input_shape": INFO["input_shape"],
        }
    )


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    cpp = cpp_sources(MODEL, INFO, "dev", _manifest().model_sha256)
    build_bundle(tmp_path, MODEL, _manifest(), cpp)
    return tmp_path


def test_a_built_bundle_verifies_and_lists_every_file(bundle: Path) -> None:
    manifest = verify_bundle(bundle)
    assert set(manifest.files) == {"model.tflite", CPP_HEADER, CPP_SOURCE, "README.md"}
    assert sorted(p.name for p in bundle.iterdir()) == sorted([*manifest.files, MANIFEST_FILE])
    assert manifest.dump() == json.loads((bundle / MANIFEST_FILE).read_text())  # keys as written


@pytest.mark.parametrize("victim", ["model.tflite", CPP_SOURCE, "README.md"])
def test_one_changed_byte_anywhere_is_refused(bundle: Path, victim: str) -> None:
    data = bytearray((bundle / victim).read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / victim).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{victim}: missing or does not match the sha256"):
        verify_bundle(bundle)


def test_a_missing_file_or_manifest_is_refused(bundle: Path) -> None:
    (bundle / CPP_HEADER).unlink()
    with pytest.raises(ArtifactError, match="missing or does not match"):
        verify_bundle(bundle)
    (bundle / MANIFEST_FILE).unlink()
    with pytest.raises(ArtifactError, match=r"no manifest\.json; not a tinyops bundle"):
        verify_bundle(bundle)


def test_a_manifest_naming_a_path_outside_the_bundle_is_refused(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"]["../escape"] = manifest["files"]["README.md"]
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="escape"):
        verify_bundle(bundle)


def test_the_cpp_header_carries_the_arena_quantization_and_exact_ops(bundle: Path) -> None:
    header = (bundle / CPP_HEADER).read_text()
    source = (bundle / CPP_SOURCE).read_text()
    assert f"constexpr size_t kTensorArenaSize = {reserved_arena(6656)};" in header
    assert "constexpr int kInputZeroPoint = -50;" in header
    assert "constexpr unsigned int kNumOps = 4;" in header
    for op in INFO["ops"]:
        assert f"resolver.{resolver_method(op)}()" in source
    assert "AddPadV2()" in source and "AddFullyConnected()" in source
    assert 'kLabels[kNumClasses] = {"zero", "quote\\"d"}' in source
    assert source.count("0x") == len(MODEL)
    assert reserved_arena(6656) == 7328  # +10%, rounded up to 16 bytes
