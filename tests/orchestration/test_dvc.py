"""dvc.yaml is the one list of stages: the CLI, the stage functions, the flow's tasks, the params
each stage logs and the catalog's paths are all checked against it."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.cli import StageName
from pipeline.core import catalog
from pipeline.orchestration.dvc import stage_names, stage_targets
from pipeline.stages import STAGE_SECTIONS, STAGES
from tests.conftest import REPO

DVC_YAML = REPO / "dvc.yaml"


def _stages() -> dict:
    return yaml.safe_load(DVC_YAML.read_text())["stages"]


def test_every_stage_list_is_dvc_yamls() -> None:
    from flows.retrain import STAGE_TASKS

    names = stage_names(DVC_YAML)
    assert names == ["prepare", "train", "export", "evaluate", "deploy", "report"]
    assert list(STAGES) == names
    assert [s.value for s in StageName] == names
    assert list(STAGE_TASKS) == names


def test_each_command_is_its_tinyops_stage() -> None:
    for name, body in _stages().items():
        cmd = (body.get("do") or body)["cmd"]
        expected = f"tinyops stage {name}" + (" --device ${key}" if "foreach" in body else "")
        assert cmd == expected


def test_each_stage_logs_exactly_the_params_dvc_tracks() -> None:
    stages = _stages()
    for name, keys in STAGE_SECTIONS.items():
        assert list(keys) == stages[name]["params"], name


def test_foreach_stages_expand_per_device_in_order() -> None:
    targets = stage_targets(["b", "a"], DVC_YAML)
    assert targets == ["prepare", "train", "export", "evaluate", "deploy@a", "deploy@b", "report"]


def test_every_catalog_output_is_declared_in_dvc_yaml() -> None:
    text = DVC_YAML.read_text()
    for path in (
        catalog.PROCESSED_DIR,
        catalog.TRAINED_DIR,
        catalog.CHECKPOINT_DIR,
        catalog.TRAIN_METRICS,
        catalog.TRAIN_HISTORY,
        catalog.EVALUATE_METRICS,
        catalog.VARIANTS_FILE,
        catalog.PREDICTIONS_FILE,
        catalog.REPORT_MD,
        catalog.REPORT_PNG,
        catalog.EXPORT_DIR,  # every variant_file and the streaming folder
    ):
        assert f"- {path.as_posix()}" in text, path
    assert f"- {catalog.DEPLOY_ROOT}/${{key}}" in text
    assert f"- {catalog.DEPLOY_STATUS_DIR}/${{key}}.json" in text
    assert not Path(catalog.STATE_DIR).is_absolute()


def test_dvc_refusals_are_never_retried(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A params key dvc.yaml tracks is missing, or a stage's input is: DVC refuses before the
    stage starts, and a retry would meet the same refusal (exit 12, not retryable). Only DVC's
    lock being held is worth retrying."""
    import pytest

    from pipeline.orchestration.dvc import StageFailed, failure_code, repro_stage, stage_env
    from tests.conftest import make_workspace, workspace_env

    ws = make_workspace(tmp_path / "ws")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    del params["prepare"]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(ws)
    env = {**workspace_env(ws), **stage_env("no-parent")}
    for target, says in (("prepare", "prepare"), ("export", "models/trained")):
        with pytest.raises(StageFailed) as err:
            repro_stage(target, env, on_line=lambda line: None)
        assert err.value.code == 12 and not err.value.retryable, str(err.value)
        assert says in str(err.value)
    assert failure_code(None, 255, "ERROR: Unable to acquire lock") == 255


def test_the_run_log_leaves_out_what_no_user_can_act_on() -> None:
    from pipeline.orchestration.dvc import is_hint

    for line in (
        "To track the changes with git, run:",
        "    git add dvc.lock",
        "    dvc config core.autostage true",
        "Use `dvc push` to send your updates to remote storage.",
        "",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1 12 port.cc:153] oneDNN custom operations are on. You may see ...",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    ):
        assert is_hint(line), line
    for line in ("Running stage 'train':", "epoch   1/40  train_loss 0.8", "error: bad.npz"):
        assert not is_hint(line), line
