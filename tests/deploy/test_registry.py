"""The registry's decision: champion against challenger on the same test split, lineage first;
and versions registered through a real MLflow store."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import tracking
from pipeline.deploy import champion, registry
from pipeline.deploy.champion import Champion


def _champion(accuracy: float | None, lineage: str | None = None) -> Champion:
    return Champion("3", accuracy, 0.99, lineage)


def test_no_production_means_the_first_version_goes_in() -> None:
    first = champion.decide(0.5, None, 0.005)
    assert first.promote and first.reason == "first version for this device"


def test_better_equal_and_worse_on_the_same_split() -> None:
    assert champion.decide(0.93, _champion(0.90), 0.005).promote
    within = champion.decide(0.896, _champion(0.90), 0.005)
    assert within.promote and "on the same test split" in within.reason
    worse = champion.decide(0.89, _champion(0.90), 0.005)
    assert not worse.promote and worse.previous_version == "3"
    assert (
        "accuracy 0.8900 is lower than production v3 (0.9000) on the same test split by more "
        "than the tolerance 0.005"
    ) in worse.reason


def test_the_recorded_score_of_another_split_plays_no_part() -> None:
    """Production scored 0.99 on its own split months ago; on today's it scores 0.95."""
    assert champion.decide(0.96, _champion(0.95), 0.005).promote


def test_another_lineage_is_refused_unless_asked() -> None:
    why = "production v3 takes 8×8×1 int8 input with 10 classes; this model takes 28×28×1 ..."
    refused = champion.decide(0.98, _champion(None, why), 0.005)
    assert not refused.promote
    assert why in refused.reason and "set deploy.new_lineage: promote" in refused.reason
    promoted = champion.decide(0.98, _champion(None, why), 0.005, new_lineage="promote")
    assert promoted.promote and "deploy.new_lineage is promote" in promoted.reason


def _version(client, device: str, accuracy: float, tmp: Path) -> str:  # type: ignore[no-untyped-def]
    run = tracking.start_parent(client, "deploy", {})
    folder = tmp / f"bundle-{accuracy}"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"x")
    client.log_artifacts(run.run_id, str(folder), "bundle")
    tags = {"accuracy": str(accuracy)}
    return registry.register(client, device, run.run_id, tags, f"v at {accuracy}").version


def test_versions_and_the_production_alias(mlflow_store: str, tmp_path: Path) -> None:
    client = tracking.client()
    assert registry.production(client, "dev") is None
    v1 = _version(client, "dev", 0.90, tmp_path)
    registry.promote(client, "dev", v1)
    v2 = _version(client, "dev", 0.93, tmp_path)
    assert registry.production(client, "dev").version == v1
    registry.promote(client, "dev", v2)
    assert registry.production(client, "dev").version == v2
    assert client.get_model_version("tinyops-dev", v2).description == "v at 0.93"
    assert registry.production(client, "other") is None
