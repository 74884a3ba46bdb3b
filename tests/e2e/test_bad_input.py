"""Bad input, through the real CLI: a non-zero exit, a message naming the file, key or device and
what to do, and every existing output unchanged (hashed before and after)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import make_workspace, tree_digest, workspace_env

pytestmark = pytest.mark.slow  # reads the first pipeline run's outputs

OUTPUTS = ("data/processed", "models", "exports", "metrics", "deploy")


@pytest.fixture(scope="module")
def good_ws(first_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding a good run's outputs, which no bad input may touch."""
    ws = make_workspace(tmp_path_factory.mktemp("bad-input"))
    for name in ("data/processed", "models", "exports", "metrics"):
        shutil.copytree(first_run / name, ws / name)
    (ws / "deploy/esp32_s3").mkdir(parents=True)
    (ws / "deploy/esp32_s3/model.tflite").write_bytes(b"stands for a production bundle")
    return ws


def _params(ws: Path, **sections: dict) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _npz(ws: Path, name: str = "bad.npz", **arrays: np.ndarray) -> str:
    path = ws / "data/raw" / name
    np.savez(path, **arrays)
    _params(ws, prepare={"source": "npz", "path": f"data/raw/{name}"})
    return name


def _xy(n: int = 12, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(classes), n)
    return np.random.default_rng(0).normal(size=(len(y), 6, 6)).astype(np.float32), y


def _images(ws: Path, size: tuple[int, int] = (10, 12)) -> Path:
    root = ws / "data/raw/images"
    for c in range(2):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(12):
            Image.new("L", size[::-1], color=i * 10).save(root / f"c{c}" / f"{i}.png")
    _params(ws, prepare={"source": "imagefolder", "path": "data/raw/images"})
    return root


def _with(ws: Path, change: Callable[[np.ndarray, np.ndarray], tuple]) -> str:
    x, y = _xy()
    x, y = change(x.copy(), y.copy())
    return _npz(ws, x=x, y=y)


def truncated(ws: Path) -> list[str]:
    x, y = _xy()
    _npz(ws, x=x, y=y)
    path = ws / "data/raw/bad.npz"
    path.write_bytes(path.read_bytes()[:200])
    return ["stage", "prepare"]


def corrupt(ws: Path) -> list[str]:
    (ws / "data/raw/bad.npz").write_bytes(os.urandom(4096))
    _params(ws, prepare={"source": "npz", "path": "data/raw/bad.npz"})
    return ["stage", "prepare"]


def not_an_image(ws: Path) -> list[str]:
    (_images(ws) / "c1/3.png").write_text("GIF89a? no, a text file")
    return ["stage", "prepare"]


def wrong_size(ws: Path) -> list[str]:
    _images(ws, size=(10, 12))
    _params(ws, prepare={"image_size": [8, 8], "resize": False})
    return ["stage", "prepare"]


def empty_folder(ws: Path) -> list[str]:
    (ws / "data/raw/images").mkdir()
    _params(ws, prepare={"source": "imagefolder", "path": "data/raw/images"})
    return ["stage", "prepare"]


def symlink_loop(ws: Path) -> list[str]:
    loop = _images(ws) / "c0/loop.png"
    loop.symlink_to(loop)  # resolves to itself: a loop
    return ["stage", "prepare"]


def huge_file(ws: Path) -> list[str]:
    with open(ws / "data/raw/bad.npz", "wb") as fh:  # 1 GiB, sparse: no disk used
        fh.truncate(1 << 30)
    _params(ws, prepare={"source": "npz", "path": "data/raw/bad.npz"})
    return ["stage", "prepare"]


def missing_path(ws: Path) -> list[str]:
    _params(ws, prepare={"source": "npz", "path": "data/raw/never_added.npz"})
    return ["stage", "prepare"]


def _edit(**sections: dict) -> Callable[[Path], list[str]]:
    def case(ws: Path) -> list[str]:
        _params(ws, **sections)
        return ["stage", "prepare"]

    return case


def _data(change: Callable) -> Callable[[Path], list[str]]:
    def case(ws: Path) -> list[str]:
        _with(ws, change)
        return ["stage", "prepare"]

    return case


def _nan(x: np.ndarray, y: np.ndarray) -> tuple:
    x[2, 0, 0] = np.nan
    return x, y


def _inf(x: np.ndarray, y: np.ndarray) -> tuple:
    x[5, 1, 1] = np.inf
    return x, y


def _neg(x: np.ndarray, y: np.ndarray) -> tuple:
    y[4] = -1
    return x, y


def _big_label(x: np.ndarray, y: np.ndarray) -> tuple:
    y[3] = 40  # 4 classes would need at least ... classes 0..40 present; most are empty
    return x, y


def misspelled_key(ws: Path) -> list[str]:
    text = (ws / "params.yaml").read_text().replace("  epochs: 40", "  epoch: 40")
    (ws / "params.yaml").write_text(text)
    return ["stage", "train"]


def unknown_section(ws: Path) -> list[str]:
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text() + "\nturbo: {on: true}\n")
    return ["run"]


def untracked_keys(ws: Path) -> list[str]:
    """DVC refused this only after prepare and train had run (issue 29)."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    del params["train"]["lr"], params["train"]["seed"], params["evaluate"]["max_int8_drop"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ["run", "--force"]


def too_big_batch(ws: Path) -> list[str]:
    _params(ws, train={"batch_size": 4096})
    return ["stage", "train"]


def _federated(keep_epochs: bool = False, **federated: object) -> Callable[[Path], list[str]]:
    """train.paradigm federated with these train.federated keys (train.epochs and
    train.patience removed, as a federated params.yaml has them, unless keep_epochs)."""

    def case(ws: Path) -> list[str]:
        params = yaml.safe_load((ws / "params.yaml").read_text())
        if not keep_epochs:
            del params["train"]["epochs"], params["train"]["patience"]
        params["train"].update({"paradigm": "federated", "federated": federated})
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return ["stage", "prepare"]

    return case


def _train(**train: object) -> Callable[[Path], list[str]]:
    def case(ws: Path) -> list[str]:
        _params(ws, train=train)
        return ["stage", "train"]

    return case


def _device(**profile: object) -> Callable[[Path], list[str]]:
    def case(ws: Path) -> list[str]:
        _params(ws, devices={"esp32_s3": profile})
        return ["stage", "deploy", "--device", "esp32_s3"]

    return case


def not_a_flatbuffer(ws: Path) -> list[str]:
    (ws / "exports/model_int8.tflite").write_bytes(b"<html>404 Not Found</html>")
    return ["stage", "evaluate"]


def unknown_device(ws: Path) -> list[str]:
    return ["stage", "deploy", "--device", "esp32_s4"]


def unsafe_device(ws: Path) -> list[str]:
    return ["rollback", "../../etc"]


def bad_cron(ws: Path) -> list[str]:
    return ["schedule", "--cron", "61 3 * * *"]


_NODE0_STORES: list[object] = []  # node 0's rendezvous stores, kept open for the case's run


def _node0(ws: Path) -> str:
    """A rendezvous store on 127.0.0.1 with node 0's fingerprint published in it, as node 0's
    watcher leaves it; node 0 trains what `ws` trains now. Its host:port."""
    import contextlib
    from datetime import timedelta

    import torch.distributed as dist

    from pipeline.core.config import load_params
    from pipeline.core.procs import free_port
    from pipeline.training.nodes import FINGERPRINT_KEY, fingerprint

    port = free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=30))
    _NODE0_STORES.append(store)
    with contextlib.chdir(ws):
        store.set(FINGERPRINT_KEY, json.dumps(fingerprint(load_params(Path("params.yaml")))))
    return f"127.0.0.1:{port}"


def worker_other_code(ws: Path) -> list[str]:
    """A node whose checkout differs from node 0's by one line of code."""
    _params(ws, train={"nnodes": 2, "rdzv_endpoint": "127.0.0.1:1", "nproc_per_node": 1})
    endpoint = _node0(ws)
    with (ws / "pipeline/stages.py").open("a") as f:
        f.write("# a local change\n")
    return ["worker", "--rdzv", endpoint]


def worker_nobody_answers(ws: Path) -> list[str]:
    from pipeline.core.procs import free_port

    _params(ws, train={"nnodes": 2, "rdzv_endpoint": f"127.0.0.1:{free_port()}",
                       "nproc_per_node": 1, "rdzv_timeout": 3})  # fmt: skip
    return ["worker"]


# case → (exit code, phrases the message must hold: what is wrong, where, and what to do)
CASES: dict[str, tuple[Callable[[Path], list[str]], int, list[str]]] = {
    "truncated_npz": (truncated, 3, ["bad.npz", "not a readable .npz", "truncated"]),
    "corrupt_npz": (corrupt, 3, ["bad.npz", "not a readable .npz"]),
    "not_an_image": (not_an_image, 3, ["3.png", "not a readable image", "Remove or replace"]),
    "wrong_size_no_resize": (wrong_size, 3, ["0.png", "10×12", "prepare.resize is false"]),
    "empty_folder": (empty_folder, 3, ["images", "no class folders", "one sub-folder per class"]),
    "symlink_loop": (symlink_loop, 3, ["loop.png", "not a regular file", "Remove"]),
    "one_gib_file": (huge_file, 3, ["bad.npz", "1,073,741,824 bytes", "refused before reading"]),
    "missing_raw_path": (missing_path, 3, ["never_added.npz", "no such file", "Set prepare.path"]),
    "lengths_differ": (_data(lambda x, y: (x, y[:-2])), 3, ["bad.npz", "34 labels", "must match"]),
    "float_labels": (_data(lambda x, y: (x, y.astype(np.float32))), 3, ["bad.npz", "integers"]),
    "negative_label": (_data(_neg), 3, ["bad.npz", "y[4] = -1", "out of range"]),
    "label_out_of_range": (_data(_big_label), 3, ["bad.npz", "min_samples_per_class"]),
    "nan": (_data(_nan), 3, ["bad.npz", "NaN"]),
    "inf": (_data(_inf), 3, ["bad.npz", "inf"]),
    "single_class": (_data(lambda x, y: (x[:12], y[:12])), 3, ["bad.npz", "only 1 class"]),
    "misspelled_key": (
        misspelled_key,
        2,
        ["params.yaml", "'train.epoch'", "Did you mean 'epochs'"],
    ),
    "tracked_keys_missing": (
        untracked_keys,
        2,
        [
            "leaves out keys that dvc.yaml tracks: train.lr, train.seed, evaluate.max_int8_drop",
            "tinyops check --write",
        ],
    ),
    "unknown_section": (unknown_section, 2, ["params.yaml", "'turbo'", "Allowed keys"]),
    "zero_epochs": (_edit(train={"epochs": 0}), 2, ["train.epochs", "greater than 0"]),
    "negative_epochs": (_edit(train={"epochs": -3}), 2, ["train.epochs", "greater than 0"]),
    "batch_over_dataset": (too_big_batch, 2, ["train.batch_size = 4096", "training split"]),
    "more_stages_than_blocks": (
        _train(parallelism="pipeline", pipeline_stages=4, nproc_per_node=4, oversubscribe=True),
        2,
        ["params.yaml", "train.pipeline_stages = 4", "the model's 3 blocks"],
    ),
    "over_worker_memory_budget": (
        _train(max_worker_memory_mb=1.2),
        2,
        [
            "train.parallelism data needs 1.44 MiB",
            "max_worker_memory_mb = 1.2",
            "pipeline (1.15 MiB) would fit",
        ],
    ),
    "nnodes_min_above_max": (
        _train(nnodes="2:1", rdzv_endpoint="127.0.0.1:29400"),
        2,
        ["params.yaml", "'train.nnodes'", "MIN 2 is above MAX 1", "did you mean '1:2'"],
    ),
    "worker_other_code": (
        worker_other_code,
        2,
        ["will not join", "code differs", "check out node 0's commit"],
    ),
    "worker_nobody_answers": (
        worker_nobody_answers,
        2,
        [
            "nobody answered at the rendezvous 127.0.0.1:",
            "within 3 s",
            "train.rdzv_timeout",
            "start `tinyops run` on node 0 first",
        ],
    ),
    "federated_with_epochs": (
        _federated(keep_epochs=True),
        2,
        [
            "train.epochs and train.patience do not apply with train.paradigm federated",
            "set train.federated.rounds and train.federated.patience",
        ],
    ),
    "federated_min_clients_over_clients": (
        _federated(clients=3, min_clients=4),
        2,
        ["'train.federated'", "min_clients 4 is more than clients 3"],
    ),
    "federated_client_below_min_samples": (
        _federated(clients=40, partition="dirichlet", alpha=0.05, min_samples=20),
        3,
        [
            "train.federated.partition dirichlet (alpha 0.05)",
            "fewer than train.federated.min_samples 20",
            "client 1 has 5",
            "a larger alpha",
        ],
    ),
    "federated_natural_without_owners": (
        _federated(partition="natural"),
        2,
        ["partition natural needs data that names each sample's owner", "prepare.source digits"],
    ),
    "federated_strategy_typo": (
        _federated(strategy="fedavgn"),
        2,
        ["'train.federated.strategy'", "Did you mean 'fedavg'"],
    ),
    "device_zero_ram": (_device(ram_bytes=0), 2, ["devices.esp32_s3.ram_bytes", "greater than 0"]),
    "device_negative_clock": (_device(clock_mhz=-240), 2, ["devices.esp32_s3.clock_mhz"]),
    "unknown_device": (unknown_device, 2, ["esp32_s4", "Did you mean 'esp32_s3'"]),
    "unsafe_device_name": (unsafe_device, 2, ["../../etc", "device name"]),
    "bad_cron": (bad_cron, 2, ["--cron '61 3 * * *'", "five cron fields"]),
    "tflite_not_a_flatbuffer": (
        not_a_flatbuffer,
        5,
        ["model_int8.tflite", "not a TFLite flatbuffer"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_clearly_and_changes_nothing(
    case: str, good_ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(good_ws, ws, symlinks=True)
    setup, code, phrases = CASES[case]
    args = setup(ws)
    before = {name: tree_digest(ws / name) for name in OUTPUTS}
    monkeypatch.chdir(ws)
    for key, value in workspace_env(good_ws).items():  # one MLflow store for every case
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, args)
    message = " ".join(result.stderr.split())  # one paragraph, however the terminal wrapped it
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert message.startswith("error:"), message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    assert {name: tree_digest(ws / name) for name in OUTPUTS} == before
    assert not [p for p in ws.rglob(".*.tmp")], "no temporary file left behind"
