"""The drift monitor on the bundled data: the demo's shift (gain 1.5×, offset +1σ on one
channel) is confirmed within 3 intervals, the clean stream never confirms, and
`tinyops field monitor` reports per device from what the field endpoint stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.bench.harness import example_params
from pipeline.cli import app
from pipeline.core import catalog
from pipeline.core.config import MonitorParams
from pipeline.field.store import FieldStore
from pipeline.monitor import demo
from tests.conftest import REPO, tree_digest


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> demo.Scenario:
    folder = tmp_path_factory.mktemp("digits") / "processed"
    return demo.scenario(example_params(None, "digits").prepare, folder)


@pytest.mark.parametrize("source,channel", [("digits", 0), ("basicmotions", 4)])
def test_the_demo_shift_is_confirmed_within_three_intervals(
    source: str, channel: int, digits: demo.Scenario, tmp_path: Path
) -> None:
    params = example_params(None, source)
    sc = digits if source == "digits" else demo.scenario(params.prepare, tmp_path / "processed")
    delays = [demo.detection_delay(sc, params.monitor, channel, seed) for seed in range(2)]
    assert all(d is not None and 1 <= d <= 3 for d in delays), delays


def test_the_clean_stream_never_confirms_drift(digits: demo.Scenario) -> None:
    clean = demo.false_alarms(digits, MonitorParams(), 60, seed=3)
    assert clean.confirmed_at is None and len(clean.intervals) == 60
    assert sum(i.drifted for i in clean.intervals) <= 2  # the threshold's 1 % of 60, and luck


def _stream(
    store: FieldStore,
    device: str,
    x: np.ndarray,
    y: np.ndarray,
    sc: demo.Scenario,
    first: int = 0,
    model: str = "0" * 64,
) -> None:
    """As a device sends: batches of 16, int8 inputs, int8 outputs, labels."""
    q, out = demo.quantized(x, sc.manifest), demo.perfect_outputs(y, sc.classes)
    for k in range(0, len(x), 16):
        store.ingest({
            "device": device, "batch_id": f"b{first + k}", "model_sha256": model,
            "samples": q[k:k + 16].tolist(), "outputs": out[k:k + 16].tolist(),
            "labels": y[k:k + 16].tolist(),
        })  # fmt: skip


def test_the_monitor_command_reports_each_device_and_a_stopped_one_changes_nothing(
    digits: demo.Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    demo.scenario(example_params(None, "digits").prepare, catalog.PROCESSED_DIR)
    for device in ("quiet", "moved", "replaced"):
        manifest = digits.manifest.model_copy(update={"device": device})
        catalog.write(catalog.DEPLOY_ROOT / device / "manifest.json", manifest)
    x, y = demo.intervals(digits.pool_x, digits.pool_y, 6, 32, seed=5)
    store = FieldStore()
    _stream(store, "quiet", x, y, digits)
    _stream(
        store,
        "moved",
        np.concatenate([x[:96], demo.shifted(x[96:], digits.normalization, 0)]),
        y,
        digits,
    )
    shifted = demo.shifted(x, digits.normalization, 0)
    _stream(
        store, "replaced", shifted, y, digits, model="1" * 64
    )  # seen by a model no longer deployed
    said = CliRunner().invoke(app, ["field", "monitor"])
    assert said.exit_code == 0, said.output
    assert "moved: DRIFT confirmed at interval 4" in said.output, said.output
    assert "quiet: no drift confirmed (6 intervals" in said.output, said.output
    assert "replaced" not in said.output  # only what the deployed model saw is judged
    report = (catalog.DRIFT_DIR / "moved" / catalog.DRIFT_MD).read_text()
    assert (
        "| 3 | 32 |" in report and (catalog.DRIFT_DIR / "moved" / catalog.DRIFT_PNG).stat().st_size
    )
    before = tree_digest(catalog.DRIFT_DIR)
    _stream(store, "moved", x[:32], y[:32], digits, first=len(x))  # a new interval came in
    from pipeline.monitor import report as report_module

    def stopped(*args: object) -> None:
        raise KeyboardInterrupt  # stopped while drawing: after the table and the figures

    monkeypatch.setattr(report_module, "_plot", stopped)
    with pytest.raises(KeyboardInterrupt):
        report_module.monitor_workspace(example_params(None, "digits"), ["moved"])
    assert tree_digest(catalog.DRIFT_DIR) == before
