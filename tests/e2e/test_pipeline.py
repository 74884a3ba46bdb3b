"""End to end on the default data: `tinyops run` → dvc repro → torchrun DDP → litert-torch →
LiteRT and TFLite Micro. Tests that only read share the session's workspace; a test that
changes a workspace works on its own copy of it (`own_ws`)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.procs import wait_until
from pipeline.deploy.bundle import INT8_KERNELS, verify_bundle
from pipeline.tflite.flatbuffer import check_full_int8, read_model
from tests.conftest import BIN, CATALOGUE, run_cmd, tree_digest, workspace_env

pytestmark = pytest.mark.slow

TRAINING = ("prepare", "train", "export", "evaluate")
ALL_STAGES = {*TRAINING, "report"} | {f"deploy@{d}" for d in CATALOGUE}
OUTPUTS = (
    "data/processed",
    "models/trained/model.pt",
    "exports/model_fp32.tflite",
    "exports/model_int8.tflite",
)


def _metrics(ws: Path) -> dict:
    return json.loads((ws / "metrics/evaluate.json").read_text())


def _digests(ws: Path) -> dict[str, object]:
    """sha256 of every pipeline output (folders file by file)."""
    return {
        name: tree_digest(ws / name)
        if (ws / name).is_dir()
        else hashlib.sha256((ws / name).read_bytes()).hexdigest()
        for name in OUTPUTS
    }


def _mlflow(ws: Path):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=workspace_env(ws)["MLFLOW_TRACKING_URI"])


def test_default_run_meets_accuracy_and_size_targets(pipeline_ws: Path) -> None:
    m = _metrics(pipeline_ws)
    assert m["framework_fp32_accuracy"] >= 0.95
    for level in ("tflite_fp32_accuracy", "tflite_int8_accuracy", "tflm_int8_accuracy"):
        assert abs(m[level] - m["framework_fp32_accuracy"]) <= 0.01, level
    assert m["tflite_int8_bytes"] <= 0.30 * m["tflite_fp32_bytes"]
    assert 0 < m["tflm_arena_bytes"] < m["tflm_fp32_arena_bytes"]
    assert m["framework_tflite_fp32_max_logit_diff"] <= 1e-4
    assert m["tflm_samples"] == m["test_samples"] > 0


def test_training_ran_ddp_on_two_workers_and_rank0_wrote(pipeline_ws: Path) -> None:
    summary = json.loads((pipeline_ws / "metrics/train.json").read_text())
    assert summary["world_size"] == 2
    log = (pipeline_ws / "run.log").read_text()
    assert "train: 2 worker(s) × 1 thread(s), backend gloo" in log
    assert log.count("epoch   1/12") == 1, "only rank 0 prints"
    blob = torch.load(pipeline_ws / "models/trained/model.pt", weights_only=True)
    assert blob["format"] == "tinyops.model/1" and blob["architecture"]["channels"] == [32, 64, 128]
    ckpts = sorted((pipeline_ws / "models/checkpoints").glob("epoch-*.pt"))
    assert len(ckpts) == 2 and ckpts[-1].name == f"epoch-{summary['epochs_run']:04d}.pt"
    history = (pipeline_ws / "metrics/train_history.csv").read_text().splitlines()
    assert history[0] == "epoch,train_loss,val_loss,val_accuracy,lr,world_size"
    assert len(history) == summary["epochs_run"] + 1
    assert summary["world_history"] == [{"from_epoch": 1, "world_size": 2}]


def test_mlflow_holds_parent_with_stage_runs(pipeline_ws: Path) -> None:
    client = _mlflow(pipeline_ws)
    exp = client.get_experiment_by_name("tinyops")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "tinyops.params_sha256" in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    # Named after what it trained and its params; the experiment opens on the runs table.
    assert (
        parent.info.run_name
        == f"digits-cnn2d-torch-ddp2 · {parent.data.tags['tinyops.params_sha256'][:6]}"
    )
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["mlflow.source.name"] == "tinyops"
    inputs = client.get_run(parent.info.run_id).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(contexts) == ["test", "train", "val"]
    assert all(d.name.startswith("digits-") and len(d.digest) == 32 for d in contexts.values())
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/accuracy_vs_size.png"}
    children = {
        r.data.tags["tinyops.stage"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == ALL_STAGES
    meta = json.loads((pipeline_ws / "data/processed/meta.json").read_text())
    for run in [parent, *children.values()]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["data_sha256"] == meta["data_sha256"]
        assert len(run.data.tags["git_commit"]) >= 7
    assert parent.data.metrics["tflm_int8_accuracy"] == _metrics(pipeline_ws)["tflm_int8_accuracy"]
    # The trained model as a LoggedModel: the parent's output, the export run's source, with
    # the .tflite variants inside and each device's bundle named on it.
    outputs = client.get_run(parent.info.run_id).outputs.model_outputs
    assert len(outputs) == 1
    model = client.get_logged_model(outputs[0].model_id)
    assert model.source_run_id == parent.info.run_id  # shown on the row a person sees
    export_outputs = client.get_run(children["export"].info.run_id).outputs.model_outputs
    assert [o.model_id for o in export_outputs] == [model.model_id]
    top = {a.path for a in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "input_example.json", "extra_files"} <= top
    extra = client.list_logged_model_artifacts(model.model_id, "extra_files")
    assert {Path(a.path).name for a in extra} == {
        f"model_{v}.tflite" for v in ("fp32", "float16", "dynamic_int8", "int8")
    }
    assert {f"bundle.{d}" for d in CATALOGUE} <= set(model.tags)
    assert parent.data.params["train.epochs"] == "12"
    train_run = children["train"]
    assert train_run.data.params["model.channels"] == "[32, 64, 128]"
    curve = client.get_metric_history(train_run.info.run_id, "val_loss")
    assert [m.step for m in curve] == list(range(1, len(curve) + 1)), "one val_loss per epoch"
    assert {a.path for a in client.list_artifacts(children["export"].info.run_id, "tflite")} == {
        f"tflite/model_{v}.tflite" for v in ("fp32", "float16", "dynamic_int8", "int8")
    }
    layers = json.loads((pipeline_ws / "metrics/int8_layers.json").read_text())["layers"]
    snr = client.get_metric_history(children["export"].info.run_id, "int8_layer_snr_db")
    assert [(m.step, m.value) for m in sorted(snr, key=lambda m: m.step)] == [
        (row["index"], row["snr_db"]) for row in layers
    ], "one SNR per int8 layer, stepped by its index"
    plots = {a.path for a in client.list_artifacts(children["evaluate"].info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in plots
    assert (
        children["evaluate"].data.metrics["tflm_arena_bytes"]
        == _metrics(pipeline_ws)["tflm_arena_bytes"]
    )


def test_dvc_is_clean_and_a_rerun_does_nothing(pipeline_ws: Path) -> None:
    assert "up to date" in run_cmd(["dvc", "status"], pipeline_ws).stdout
    before = _digests(pipeline_ws)
    out = run_cmd(["dvc", "repro"], pipeline_ws).stdout
    assert "Running stage" not in out
    assert _digests(pipeline_ws) == before


def test_force_repro_reproduces_identical_bytes(own_ws: Path) -> None:
    """Forced rerun of the training stages (what the bytes depend on); deploy has its own tests."""
    before = _digests(own_ws)
    run_cmd(["dvc", "repro", "--force", "evaluate"], own_ws)
    assert _digests(own_ws) == before
    assert "up to date" in run_cmd(["dvc", "status"], own_ws).stdout
    # A bare `dvc repro` still groups its stages under one parent run.
    client = _mlflow(own_ws)
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    dvc_parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "dvc repro"]
    assert len(dvc_parents) == 1
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == dvc_parents[0].info.run_id]
    assert sorted(r.data.tags["tinyops.stage"] for r in kids) == sorted(TRAINING)


MCUS = ("arduino_nano_33_ble_sense", "raspberry_pi_pico", "esp32_s3", "stm32f746")
CPP_DIR = Path(__file__).parents[1] / "cpp"


def _devices(ws: Path) -> dict:
    return yaml.safe_load((ws / "params.yaml").read_text())["devices"]


def test_every_device_has_a_verified_bundle_or_a_rejection(pipeline_ws: Path) -> None:
    devices = _devices(pipeline_ws)
    assert len(devices) >= 6
    for name in devices:
        folder = pipeline_ws / "deploy" / name
        assert (folder / "manifest.json").is_file() or (folder / "rejected.json").is_file(), name
    for name in MCUS:
        manifest = verify_bundle(pipeline_ws / "deploy" / name).dump()  # sha256 and size checked
        model = (pipeline_ws / "deploy" / name / "model.tflite").read_bytes()
        assert manifest["model_sha256"] == hashlib.sha256(model).hexdigest()
        assert manifest["variant"] == "int8" and manifest["runtime"] == "tflm"
        check_full_int8(model)
        for key in (
            "device",
            "model_file",
            "model_bytes",
            "arena_bytes",
            "accuracy",
            "estimated_latency_ms",
            "checks",
            "mlflow_run_id",
            "git_commit",
            "data_sha256",
        ):
            assert key in manifest, key
        names = {c["name"] for c in manifest["checks"]}
        assert names - {"firmware"} == {"flash", "ram", "ops", "accuracy", "latency"}
        assert all(c["passed"] for c in manifest["checks"])
        arena = manifest["arena_measured_bytes"]  # the C++ build's where the firmware check ran
        assert arena <= manifest["arena_bytes"] <= 1.25 * arena
        assert arena <= _metrics(pipeline_ws)["tflm_arena_bytes"]  # Python's: 64-bit pointers
    status = json.loads((pipeline_ws / "metrics/deploy/raspberry_pi_4.json").read_text())
    assert {c["variant"] for c in status["candidates"]} == {
        "fp32",
        "float16",
        "dynamic_int8",
        "int8",
    }
    assert "host" in status["candidates"][0]["latency_kind"]


def test_generated_cpp_compiles_embeds_the_model_and_registers_its_ops(
    pipeline_ws: Path, tmp_path: Path
) -> None:
    for name in MCUS:
        bundle = pipeline_ws / "deploy" / name
        manifest = json.loads((bundle / "manifest.json").read_text())
        flags = ["g++", "-std=c++17", "-Wall", "-Werror", f"-I{CPP_DIR}", f"-I{bundle}"]
        subprocess.run(
            [*flags, "-c", str(bundle / "tinyops_model.cc"), "-o", str(tmp_path / f"{name}.o")],
            check=True,
        )
        exe = tmp_path / f"dump_{name}"
        subprocess.run(
            [
                *flags,
                str(CPP_DIR / "dump_bundle.cc"),
                str(bundle / "tinyops_model.cc"),
                "-o",
                str(exe),
            ],
            check=True,
        )
        out = subprocess.run(
            [str(exe), str(tmp_path / f"{name}.bin")], check=True, capture_output=True, text=True
        ).stdout.splitlines()
        model = (bundle / "model.tflite").read_bytes()
        assert (tmp_path / f"{name}.bin").read_bytes() == model, "the C array is the model"
        assert (
            f"arena {manifest['arena_bytes']}" in out
            and "aligned16 1" in out
            and "labels 10" in out
        )
        registered = [line.removeprefix("op ").split() for line in out if line.startswith("op ")]
        assert [r[0] for r in registered] == list(read_model(model).op_names) == manifest["ops"]
        # int8-only kernels wherever TFLite Micro has them (CMSIS-NN then links no other type's)
        assert all(r[1:] == (["int8"] if r[0] in INT8_KERNELS else []) for r in registered)


def test_too_small_profiles_are_rejected_naming_the_budget(own_ws: Path, tmp_path: Path) -> None:
    params = yaml.safe_load((own_ws / "params.yaml").read_text())
    base = params["devices"]["arduino_nano_33_ble_sense"]
    params["devices"] = {
        "tiny_ram": base | {"ram_bytes": 8192},
        "tiny_flash": base | {"flash_bytes": 100_000},
    }
    params["firmware"]["enabled"] = False  # the budgets judge the estimates just as well
    other = tmp_path / "tiny.yaml"
    other.write_text(yaml.safe_dump(params))
    for device, check, budget in (
        ("tiny_ram", "ram", "budget 8,192 B"),
        ("tiny_flash", "flash", "budget 100,000 B"),
    ):
        out = run_cmd(
            ["tinyops", "stage", "deploy", "--params", str(other), "--device", device], own_ws
        )
        assert f"deploy@{device}: rejected" in out.stdout
        rejected = json.loads((own_ws / "deploy" / device / "rejected.json").read_text())
        failed = [c for c in rejected["candidates"][0]["checks"] if not c["passed"]]
        assert [c["name"] for c in failed] == [check]
        assert budget in failed[0]["reason"]
        assert not (own_ws / "deploy" / device / "model.tflite").exists()
    params["deploy"]["require_all"] = True
    other.write_text(yaml.safe_dump(params))
    proc = run_cmd(
        ["tinyops", "stage", "deploy", "--params", str(other), "--device", "tiny_ram"],
        own_ws,
        check=False,
    )
    assert proc.returncode == 10 and "no variant fits" in proc.stderr


@pytest.mark.parametrize("name", ["../x", "a/b", "", "UPPER"])
def test_unsafe_device_names_are_refused_before_writing(
    pipeline_ws: Path, tmp_path: Path, name: str
) -> None:
    params = yaml.safe_load((pipeline_ws / "params.yaml").read_text())
    params["devices"] = {name: params["devices"]["esp32_s3"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(params))
    before = tree_digest(pipeline_ws / "deploy"), sorted(p.name for p in pipeline_ws.iterdir())
    proc = run_cmd(
        ["tinyops", "stage", "deploy", "--params", str(bad), "--device", name or "x"],
        pipeline_ws,
        check=False,
    )
    assert proc.returncode == 2 and "is not allowed" in proc.stderr
    rb = run_cmd(["tinyops", "rollback", name], pipeline_ws, check=False)
    assert rb.returncode == 2 and "is not allowed" in rb.stderr
    assert (
        tree_digest(pipeline_ws / "deploy"),
        sorted(p.name for p in pipeline_ws.iterdir()),
    ) == before


def test_registry_has_production_per_device(pipeline_ws: Path) -> None:
    client = _mlflow(pipeline_ws)
    for name in _devices(pipeline_ws):
        version = client.get_model_version_by_alias(f"tinyops-{name}", "production")
        manifest = json.loads((pipeline_ws / "deploy" / name / "manifest.json").read_text())
        assert version.tags["model_sha256"] == manifest["model_sha256"]
        assert version.tags["variant"] == manifest["variant"]
    out = run_cmd(["tinyops", "devices"], pipeline_ws).stdout
    for name in _devices(pipeline_ws):
        version = client.get_model_version_by_alias(f"tinyops-{name}", "production").version
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert f" v{version} " in row, out
    report = (pipeline_ws / "report/deploy.md").read_text()
    assert all(name in report for name in _devices(pipeline_ws))
    assert "Trained with data dp2 on 2 worker(s); model state per worker" in report
    assert "1.44 / 1.44 MiB (the whole model's: 1.44 MiB)" in report
    assert (pipeline_ws / "report/accuracy_vs_size.png").read_bytes()[:4] == b"\x89PNG"


def _flow_run(flow_run_id: str):  # type: ignore[no-untyped-def]
    """A flow run and its task runs, read back from the session's Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return flow_run, tasks


def _pipeline_parents(ws: Path) -> list:
    client = _mlflow(ws)
    runs = client.search_runs([client.get_experiment_by_name("tinyops").experiment_id])
    return [r for r in runs if "tinyops.params_sha256" in r.data.tags]


def test_the_flow_run_and_every_task_completed_on_the_server(
    pipeline_ws: Path, prefect_here: str
) -> None:
    """The first `tinyops run` reported to a real Prefect server: read the run back from it."""
    (parent,) = _pipeline_parents(pipeline_ws)
    flow_run_id = parent.data.tags["prefect.flow_run_id"]
    flow_run, tasks = _flow_run(flow_run_id)
    assert flow_run.state.is_completed() and flow_run.state.name == "Completed"
    assert {t.name for t in tasks} == {"ingest", *ALL_STAGES}
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state) for t in tasks]
    # Raw API call: Prefect 3.8's client sends nulls this server's schema rejects (422).
    query = {
        "flow_runs": {"id": {"any_": [str(flow_run.id)]}},
        "limit": 50,
        "offset": 0,
        "sort": "CREATED_DESC",
    }
    req = urllib.request.Request(
        f"{prefect_here}/artifacts/filter",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        by_key = {a["key"]: a for a in json.loads(resp.read())}
    assert parent.info.run_id in by_key["mlflow-run"]["data"]
    table = by_key["devices"]["data"]
    assert all(d in table for d in CATALOGUE) and "promoted" in table
    assert "up to date" in run_cmd(["dvc", "status"], pipeline_ws).stdout


def test_a_rerun_with_nothing_new_is_skipped_before_any_stage(
    own_ws: Path, prefect_here: str
) -> None:
    before = _digests(own_ws), tree_digest(own_ws / "deploy")
    proc = run_cmd(["tinyops", "run"], own_ws)
    out = proc.stdout + proc.stderr
    assert "skipped: nothing new since the last successful run" in proc.stdout
    flow_run, tasks = _flow_run(re.search(r"runs/flow-run/([0-9a-f-]{36})", out).group(1))
    assert flow_run.state.is_completed() and flow_run.state.name == "Skipped"
    assert [t.name for t in tasks] == ["ingest"], "no training, no export, no deploy"
    assert len(_pipeline_parents(own_ws)) == 1, "a skipped run opens no MLflow run"
    assert (_digests(own_ws), tree_digest(own_ws / "deploy")) == before
    assert "up to date" in run_cmd(["dvc", "status"], own_ws).stdout
    # Without a Prefect server the same decision is taken before Prefect's temporary one starts.
    env = {k: v for k, v in workspace_env(own_ws).items() if k != "PREFECT_API_URL"}
    quick = subprocess.run(
        [str(BIN / "tinyops"), "run"], cwd=own_ws, env=env, capture_output=True, text=True
    )
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert "skipped: nothing new since the last successful run" in quick.stdout
    assert "temporary server" not in quick.stdout + quick.stderr, "decided before Prefect starts"
    assert len(_pipeline_parents(own_ws)) == 1
    assert (_digests(own_ws), tree_digest(own_ws / "deploy")) == before


def test_scheduled_deployment_picks_up_new_data_then_skips(
    own_ws: Path, prefect_here: str, tmp_path: Path
) -> None:
    """`tinyops schedule` on the real server: read back the cron; a triggered run versions the
    new raw file with DVC and completes; a second trigger with nothing new ends as Skipped."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    new_file = own_ws / "data/raw/field_notes_2026-11.csv"
    new_file.write_text("sample,label\n1,3\n")
    env = workspace_env(own_ws) | {"PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        serve = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tinyops"),
                "schedule",
                "--cron",
                "0 3 * * *",
                "--name",
                "nightly-test",
            ],
            cwd=own_ws,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        with get_client(sync_client=True) as client:

            def deployed():  # type: ignore[no-untyped-def]
                assert serve.poll() is None, log.read_text()
                try:
                    return client.read_deployment_by_name("retrain/nightly-test")
                except Exception:  # not created yet
                    return None

            deployment = wait_until(deployed, 90, "deployment retrain/nightly-test", 0.5)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
            assert deployment.schedules[0].active and not deployment.paused
            first = run_deployment(deployment.id, timeout=600, poll_interval=1)
            assert first.state.name == "Completed", log.read_text()[-3000:]
            second = run_deployment(deployment.id, timeout=300, poll_interval=1)
            assert second.state.name == "Skipped", log.read_text()[-3000:]
            assert "nothing new" in second.state.message
            finished = r"Flow run '[^']+' - Finished in state (Completed|Skipped)"
            wait_until(  # the runner has reported both runs: idle again
                lambda: len(re.findall(finished, log.read_text())) >= 2, 30, "both runs logged"
            )
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    with get_client(sync_client=True) as client:
        assert client.read_deployment(deployment.id).paused, "stopping the server pauses it"
    text = log.read_text()
    assert f"new raw data, versioning with dvc add: data/raw/{new_file.name}" in text
    assert "Running stage 'prepare'" in text and "Running stage 'train'" not in text
    assert (own_ws / f"data/raw/{new_file.name}.dvc").is_file()
    assert f"/{new_file.name}" in (own_ws / "data/raw/.gitignore").read_text()
    parents = _pipeline_parents(own_ws)
    assert [p.data.tags["prefect.flow_run_id"] for p in parents].count(str(first.id)) == 1
    assert "up to date" in run_cmd(["dvc", "status"], own_ws).stdout


def test_rollback_restores_the_previous_bundle_byte_for_byte(own_ws: Path) -> None:
    """Deploy the same model again (v2, same accuracy: promoted), then roll back to v1."""
    device = "arduino_nano_33_ble_sense"
    client = _mlflow(own_ws)
    out = run_cmd(["tinyops", "stage", "deploy", "--device", device], own_ws).stdout
    assert f"deploy@{device}: promoted" in out
    assert client.get_model_version_by_alias(f"tinyops-{device}", "production").version == 2
    first = json.loads((own_ws / "first_deploy.json").read_text())[device]
    assert tree_digest(own_ws / "deploy" / device) != first, "v2's manifest names another run"
    out = run_cmd(["tinyops", "rollback", device], own_ws).stdout
    assert "production v2 → v1" in out
    assert tree_digest(own_ws / "deploy" / device) == first
    assert client.get_model_version_by_alias(f"tinyops-{device}", "production").version == 1
    again = run_cmd(["tinyops", "rollback", device], own_ws, check=False)
    assert again.returncode == 9 and "nothing to roll back to" in again.stderr


def test_a_worse_model_reruns_train_not_prepare_and_production_stays(own_ws: Path) -> None:
    """A smaller, shorter-trained model: train and later stages rerun, prepare does not; every
    device registers the candidate but keeps its production version and bundle. A second run
    started meanwhile exits at once (code 11) and writes nothing; the first completes."""
    params_path = own_ws / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["train"]["epochs"] = 2
    params["model"]["channels"] = [4]
    # An MCU and a LiteRT device prove the rule as well as six; promotion needs no firmware.
    params["devices"] = {d: params["devices"][d] for d in ("esp32_s3", "raspberry_pi_4")}
    params["firmware"]["enabled"] = False
    params["orchestrate"]["preflight"] = False  # a new model: preflight would build firmware
    for profile in params["devices"].values():
        profile["min_accuracy"] = 0.0  # it fits; only the promotion rule may stop it
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    processed = tree_digest(own_ws / "data/processed")
    client = _mlflow(own_ws)
    prod_before = {
        d: client.get_model_version_by_alias(f"tinyops-{d}", "production").version
        for d in params["devices"]
    }
    bundles_before = {d: tree_digest(own_ws / "deploy" / d) for d in params["devices"]}
    lock = own_ws / ".tinyops/pipeline.lock"
    first = subprocess.Popen(  # the flow: a params change retrains
        [str(Path(sys.executable).parent / "tinyops"), "run"],
        cwd=own_ws,
        env=workspace_env(own_ws),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def holding() -> bool:  # the first run holds the workspace
        assert first.poll() is None, first.communicate()[0][-3000:]
        return bool(lock.read_text().strip())

    wait_until(holding, 120, "the first run to hold the workspace", 0.2)
    second = run_cmd(["tinyops", "run"], own_ws, check=False)
    assert second.returncode == 11, second.stdout + second.stderr
    assert "another pipeline run" in second.stderr and "pipeline.lock" in second.stderr
    out = first.communicate(timeout=900)[0]
    assert first.returncode == 0, out[-4000:]
    assert "Stage 'prepare' didn't change, skipping" in out
    for stage in ("train", "export", "evaluate", "deploy@esp32_s3", "report"):
        assert f"Running stage '{stage}'" in out
    assert tree_digest(own_ws / "data/processed") == processed
    assert _metrics(own_ws)["tflm_int8_accuracy"] < 0.99
    for device in params["devices"]:
        status = json.loads((own_ws / "metrics/deploy" / f"{device}.json").read_text())
        assert status["status"] == "kept", (device, status["reason"])
        assert "lower than production" in status["reason"]
        assert (
            client.get_model_version_by_alias(f"tinyops-{device}", "production").version
            == prod_before[device]
        )
        assert tree_digest(own_ws / "deploy" / device) == bundles_before[device]
    assert "lower than production" in (own_ws / "report/deploy.md").read_text()


def test_preflight_flash_and_ram_are_the_trained_firmwares_within_one_percent(
    pipeline_ws: Path,
) -> None:
    """Preflight built the untrained graph into each Cortex-M device's firmware (the library was
    cached); the trained model's bundles measured theirs: sizes do not depend on weights."""
    import os

    report = json.loads((pipeline_ws / "metrics/preflight.json").read_text())
    compared = 0
    for device, answer in report["devices"].items():
        manifest = json.loads((pipeline_ws / "deploy" / device / "manifest.json").read_text())
        measured = (manifest.get("firmware") or {}).get("measured")
        if not measured:
            continue
        if not answer["sizes"].startswith("measured"):
            if os.environ.get("TINYOPS_REQUIRE_FIRMWARE") == "1":
                pytest.fail(f"{device}: preflight did not build the firmware: {answer['sizes']}")
            pytest.skip(f"{device}: {answer['sizes']}")
        for key in ("flash_bytes", "ram_bytes"):
            assert abs(answer[key] - measured[key]) <= 0.01 * measured[key], (device, key)
        compared += 1
    assert compared == 3, "nano 33 (M4F), Pico (M0+) and STM32F746 (M7F) have firmware figures"


def test_preflight_leaves_the_runs_log_in_prefects_format_without_framework_noise(
    pipeline_ws: Path,
) -> None:
    """Preflight loads torch and litert-torch (TensorFlow) in a child process: in the flow's
    own, TensorFlow's logging set-up had turned every Prefect line into `INFO:prefect...`."""
    log = (pipeline_ws / "run.log").read_text()
    assert "preflight: cnn2d" in log, log[:2000]
    assert "| INFO    | Task run 'prepare' - Running stage 'prepare'" in log, log[-3000:]
    assert "INFO:prefect" not in log
    assert "oneDNN custom operations" not in log and "absl::InitializeLog" not in log


def test_a_push_that_fails_is_said_and_the_outputs_stay(
    own_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote refuses (a read-only place): the push says so and how to retry; nothing local
    changes (the run that called it has already succeeded)."""
    from pipeline.orchestration.dvc import push

    run_cmd(["dvc", "remote", "add", "-d", "store", "/proc/tinyops-remote"], own_ws)
    monkeypatch.chdir(own_ws)
    before = tree_digest(own_ws / "models")
    said = push(workspace_env(own_ws))
    assert said is not None and said.startswith(
        "dvc push to 'store' (/proc/tinyops-remote) failed:"
    )
    assert said.endswith("The run succeeded; run `dvc push` to retry"), said
    assert tree_digest(own_ws / "models") == before
