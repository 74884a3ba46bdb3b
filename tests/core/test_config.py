"""params.yaml validation: every bad key or value stops before any work, naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import Params, load_params, parse_params
from pipeline.core.errors import ConfigError
from tests.conftest import BIN, CATALOGUE, REPO


def test_repo_params_yaml_is_valid_and_matches_defaults() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.model_copy(update={"devices": {}}) == Params(), (
        "params.yaml spells out the defaults"
    )
    assert set(CATALOGUE) <= set(params.devices)


NANO = {
    "runtime": "tflm",
    "flash_bytes": 1048576,
    "ram_bytes": 262144,
    "clock_mhz": 64,
    "cycles_per_mac": 2.0,
}


@pytest.mark.parametrize(
    ("devices", "phrases"),
    [
        ({"../x": NANO}, ["device name '../x' is not allowed"]),
        ({"a/b": NANO}, ["device name 'a/b' is not allowed"]),
        ({"": NANO}, ["device name '' is not allowed"]),
        ({"nano": NANO | {"ram_bytes": 0}}, ["'devices.nano.ram_bytes'", "greater than 0"]),
        ({"nano": NANO | {"clock_mhz": -64}}, ["'devices.nano.clock_mhz'", "greater than 0"]),
        ({"nano": NANO | {"runtime": "arduino"}}, ["'devices.nano.runtime'", "'tflm' or 'litert'"]),
        (
            {"nano": NANO | {"variants": ["fp32"]}},
            ["TFLite Micro targets take full-int8 models only"],
        ),
        ({"nano": NANO | {"variants": ["int4"]}}, ["'devices.nano.variants.0'"]),
        (
            {"nano": NANO | {"ram": 1}},
            ["unknown key 'devices.nano.ram'", "Did you mean 'ram_bytes'?"],
        ),
        ({"nano": {"runtime": "tflm"}}, ["'devices.nano.flash_bytes'", "Field required"]),
        (
            {"nano": NANO | {"cpu": "cortex-m4fp"}},
            ["'devices.nano.cpu'", "Did you mean 'cortex-m4+fp'?"],
        ),
        (
            {"nano": NANO | {"kernels": "cmsis"}},
            ["'devices.nano.kernels'", "Did you mean 'cmsis_nn'?"],
        ),
        (
            {"nano": NANO | {"cpu": "xtensa-lx7", "kernels": "cmsis_nn"}},
            ["'devices.nano'", "cmsis_nn needs a Cortex-M cpu, not xtensa-lx7"],
        ),
    ],
)
def test_bad_device_profiles_name_the_device_and_key(devices: dict, phrases: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"devices": devices})
    for phrase in phrases:
        assert phrase in str(err.value)


@pytest.mark.parametrize(
    ("data", "phrases"),
    [
        ({"train": {"epoch": 3}}, ["unknown key 'train.epoch'", "Did you mean 'epochs'?"]),
        (
            {"trian": {}},
            ["unknown key 'trian'", "Did you mean 'train'?", "evaluate, export, firmware, model"],
        ),
        ({"train": {"epochs": 0}}, ["'train.epochs'", "greater than 0", "(got 0)"]),
        ({"train": {"epochs": -5}}, ["'train.epochs'", "greater than 0"]),
        ({"train": {"epochs": "ten"}}, ["'train.epochs'", "valid integer", "'ten'"]),
        ({"train": {"lr": "1e-3"}}, ["'train.lr'", "write it with a dot"]),
        ({"train": {"batch_size": 2.5}}, ["'train.batch_size'", "integer"]),
        ({"prepare": {"source": "csv"}}, ["'prepare.source'", "'digits', 'npz', 'imagefolder'"]),
        ({"prepare": {"source": "series_csv"}}, ["needs prepare.path"]),
        ({"prepare": {"sequence_length": 0}}, ["'prepare.sequence_length'", "greater than 0"]),
        ({"model": {"arch": "grú"}}, ["'model.arch'", "Did you mean 'gru'?"]),
        ({"prepare": {"source": "npz"}}, ["needs prepare.path"]),
        ({"prepare": {"val_fraction": 0.5, "test_fraction": 0.45}}, ["below 0.9"]),
        ({"prepare": {"val_fraction": 1.5}}, ["'prepare.val_fraction'", "less than 1"]),
        ({"train": {"nnodes": 2}}, ["needs rdzv_endpoint"]),
        (
            {"train": {"nnodes": "2:1", "rdzv_endpoint": "h:1"}},
            ["'train.nnodes'", "MIN 2 is above MAX 1", "did you mean '1:2'"],
        ),
        ({"train": {"nnodes": "1:x"}}, ["'train.nnodes'", "range MIN:MAX"]),
        ({"train": {"nnodes": "0:2"}}, ["'train.nnodes'", "at least 1 node"]),
        (
            {"train": {"nnodes": "1:2", "rdzv_endpoint": "h:1", "parallelism": "pipeline"}},
            ["elastic", "parallelism pipeline", "data or fsdp"],
        ),
        (
            {"model": {"framework": "keras"}, "train": {"nnodes": "1:2", "rdzv_endpoint": "h:1"}},
            ["elastic", "model.framework torch"],
        ),
        ({"train": {"backend": "mpi"}}, ["'train.backend'", "'auto', 'gloo' or 'nccl'"]),
        ({"model": {"channels": []}}, ["'model.channels'", "at least 1"]),
        ({"model": {"kernel_size": 4}}, ["'model.kernel_size'", "3 or 5"]),
        ({"evaluate": {"arena_max_bytes": 0}}, ["'evaluate.arena_max_bytes'"]),
        ({"firmware": {"sample": 3}}, ["unknown key 'firmware.sample'", "Did you mean 'samples'?"]),
        ({"tflm": {"build_type": "debug"}}, ["'tflm.build_type'", "'release' or 'default'"]),
    ],
)
def test_bad_values_name_the_key(data: dict, phrases: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    for phrase in phrases:
        assert phrase in str(err.value)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_params({"train": {"epochs": 0, "lr": 5.0}, "export": {"samples": 1}})
    text = str(err.value)
    assert "'train.epochs'" in text and "'train.lr'" in text and "'export.samples'" in text


def test_params_are_frozen() -> None:
    params = parse_params({})
    with pytest.raises(Exception, match="frozen"):
        params.train.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "phrase"),
    [("- a\n- b\n", "expected a mapping"), ("train: [1, 2\n", "not valid YAML")],
)
def test_malformed_files(tmp_path: Path, text: str, phrase: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=phrase):
        load_params(path)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_params(tmp_path / "nope.yaml")


def test_cli_rejects_bad_config_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"train": {"epochs": 0}}))
    proc = subprocess.run(
        [str(BIN / "tinyops"), "stage", "prepare", "--params", str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "'train.epochs'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "nothing may be written"


def test_check_finds_a_missing_model_file_before_any_run(tmp_path: Path) -> None:
    """model.arch tflite names a file no stage makes: `tinyops check` (and a run, before any
    stage) says it is missing, naming the key."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] |= {"arch": "tflite", "path": "user_models/never_added.tflite"}
    given = tmp_path / "params.yaml"
    given.write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [str(BIN / "tinyops"), "check", "--params", str(given)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    message = " ".join(proc.stderr.split())
    assert "model.path user_models/never_added.tflite: no such file" in message


def test_help_imports_no_heavy_framework() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['tinyops', '--help']\n"
        "from pipeline.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'tensorflow', 'keras', 'litert_torch', 'mlflow', 'sklearn')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in proc.stdout


def test_framework_is_validated_with_a_hint_and_against_the_strategy() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'keras'"):
        parse_params({"model": {"framework": "kears"}})
    with pytest.raises(ConfigError, match=r"train\.parallelism fsdp needs model\.framework torch"):
        parse_params({"model": {"framework": "keras"}, "train": {"parallelism": "fsdp"}})
    with pytest.raises(ConfigError, match=r"needs train\.worker_hosts"):
        parse_params(
            {"model": {"framework": "keras"}, "train": {"nnodes": 2, "rdzv_endpoint": "h:1"}}
        )


SEQ = {"source": "basicmotions"}


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"prepare": SEQ}, "for time series use one of: cnn1d, dscnn1d, tcn, gru"),
        ({"model": {"arch": "gru"}}, "gives images, which model.arch gru cannot take"),
        (
            {"prepare": SEQ, "model": {"arch": "lstm", "framework": "keras"}},
            "model.arch lstm is built for model.framework torch only",
        ),
        (
            {"prepare": SEQ, "model": {"arch": "autoencoder", "framework": "keras"}},
            "the Keras families are cnn2d, cnn1d, dscnn1d, tcn",
        ),
        (
            {"prepare": SEQ, "model": {"arch": "gru"}, "train": {"parallelism": "pipeline"}},
            "model.arch gru trains with parallelism data or fsdp",
        ),
        (
            {"prepare": SEQ, "model": {"arch": "transformer", "hidden_size": 30, "heads": 4}},
            "hidden_size 30 must be a multiple of heads 4",
        ),
    ],
)
def test_family_combinations_refused_before_any_work(data: dict, phrase: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_params(data)
    assert phrase in str(err.value)


def test_keras_builds_the_conv_sequence_families_and_says_which() -> None:
    from pipeline.core.config import KERAS_ARCHS
    from pipeline.models.architecture import KERAS_FAMILIES

    assert set(KERAS_ARCHS) == set(KERAS_FAMILIES)
    for arch in ("cnn1d", "dscnn1d", "tcn"):
        params = parse_params({"prepare": SEQ, "model": {"arch": arch, "framework": "keras"}})
        assert params.model.framework == "keras"


def test_example_overlay_validates_and_names_the_example(tmp_path: Path) -> None:
    import yaml

    from pipeline.core.config import with_example

    base = yaml.safe_load(Path("params.yaml").read_text())
    for example in Path("examples").glob("*.yaml"):
        overlay = yaml.safe_load(example.read_text())
        if overlay["model"]["arch"] == "custom":  # your own model: no other family to pick
            assert parse_params(with_example(base, overlay, str(example))).model.module
            continue
        for arch in ("dscnn1d", "gru", "lstm", "transformer", "tcn", "cnn1d", "autoencoder"):
            merged = with_example(base, yaml.safe_load(example.read_text()), str(example), arch)
            assert parse_params(merged).model.arch == arch
    with pytest.raises(ConfigError, match=r"examples/x.yaml.*'model.arch'.*Did you mean 'gru'"):
        with_example(base, {"prepare": SEQ}, "examples/x.yaml", "gur")


def test_keras_workers_get_a_cluster_from_the_worker_hosts() -> None:
    from pipeline.training.keras_launch import cluster, tf_config

    params = parse_params(
        {"model": {"framework": "keras"},
         "train": {"nnodes": 2, "rdzv_endpoint": "a:1", "worker_hosts": ["a:9000", "b:9100"]}}
    )  # fmt: skip
    workers = cluster(params)
    assert workers == ["a:9000", "a:9001", "b:9100", "b:9101"]
    assert json.loads(tf_config(workers, 3))["task"] == {"type": "worker", "index": 3}


def test_a_worker_host_without_a_port_is_named() -> None:
    with pytest.raises(ConfigError, match=r"train\.worker_hosts.*'node-b' is not host:port"):
        parse_params({"train": {"worker_hosts": ["node-a:23456", "node-b"]}})


def test_the_shipped_params_yaml_holds_every_key_dvc_tracks() -> None:
    """It lacked deploy.new_lineage, so a later default change would have moved no DVC hash."""
    from pipeline.core.config import missing_keys, read_params
    from pipeline.orchestration.dvc import tracked_params

    tracked = tracked_params(REPO / "dvc.yaml")
    assert {"train", "model", "train.seed", "evaluate.max_int8_drop", "deploy"} <= set(tracked)
    assert missing_keys(read_params(REPO / "params.yaml"), tracked) == []


def test_check_write_fills_in_the_left_out_tracked_keys_and_keeps_the_rest(
    tmp_path: Path,
) -> None:
    from pipeline.core.config import missing_keys, read_params
    from pipeline.orchestration.dvc import tracked_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["train"]["lr"], raw["evaluate"], raw["export"]["calibration_samples"]
    raw["train"]["epochs"] = 7
    path = tmp_path / "params.yaml"
    path.write_text("# my notes\n\n" + yaml.safe_dump(raw, sort_keys=False))
    tracked = tracked_params(REPO / "dvc.yaml")
    assert missing_keys(read_params(path), tracked)[:2] == [
        "train.lr",
        "export.calibration_samples",
    ]
    argv = ["check", "--params", str(path)]
    refused = subprocess.run([BIN / "tinyops", *argv], capture_output=True, text=True, cwd=REPO)
    assert refused.returncode == 2 and "train.lr, export.calibration_samples, evaluate" in " ".join(
        refused.stderr.split()
    ), refused.stderr
    written = subprocess.run(
        [BIN / "tinyops", *argv, "--write"], capture_output=True, text=True, cwd=REPO
    )
    assert written.returncode == 0, written.stderr
    assert missing_keys(read_params(path), tracked) == []
    assert path.read_text().startswith("# my notes\n\n")
    filled = load_params(path)
    assert filled.train.epochs == 7 and filled.train.lr == Params().train.lr
    assert (tmp_path / "params.yaml.bak").read_text().count("\n  lr:") == 0  # train.lr itself


def test_node_counts_and_ranges() -> None:
    """2, "2" and "2:2" are one fixed count; "1:2" is elastic, planned at its largest world."""
    for value in (2, "2", "2:2"):
        tp = parse_params({"train": {"nnodes": value, "rdzv_endpoint": "h:1"}}).train
        assert (tp.nnodes, tp.min_nodes, tp.max_nodes, tp.elastic) == (2, 2, 2, False)
    params = parse_params({"train": {"nnodes": " 1:2 ", "rdzv_endpoint": "h:1"}})
    assert (params.train.nnodes, params.train.elastic) == ("1:2", True)
    from pipeline.core.config import parallel_plan

    assert parallel_plan(params).world == 4 and parallel_plan(params, world=2).dp == 2
