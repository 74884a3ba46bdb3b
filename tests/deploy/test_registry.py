"""The registry's decision, through a real MLflow store: promote unless accuracy drops past the
tolerance, against the version in production."""

from __future__ import annotations

from pathlib import Path

from pipeline.core import tracking
from pipeline.deploy import registry


def _version(client, device: str, accuracy: float, tmp: Path) -> str:  # type: ignore[no-untyped-def]
    run = tracking.start_parent(client, "deploy", {})
    folder = tmp / f"bundle-{accuracy}"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(b"x")
    client.log_artifacts(run.run_id, str(folder), "bundle")
    return registry.register(client, device, run.run_id, {"accuracy": str(accuracy)}).version


def test_first_better_equal_and_worse_challengers(mlflow_store: str, tmp_path: Path) -> None:
    client = tracking.client()
    first = registry.decide(client, "dev", 0.90, 0.005)
    assert first.promote and first.reason == "first version for this device"
    v1 = _version(client, "dev", 0.90, tmp_path)
    registry.promote(client, "dev", v1)

    better = registry.decide(client, "dev", 0.93, 0.005)
    assert better.promote and better.previous_version == v1
    within = registry.decide(client, "dev", 0.896, 0.005)  # lower, but inside the tolerance
    assert within.promote
    worse = registry.decide(client, "dev", 0.89, 0.005)
    assert not worse.promote
    assert f"lower than production v{v1} (0.9000) by more than the tolerance 0.005" in worse.reason

    v2 = _version(client, "dev", 0.93, tmp_path)
    registry.promote(client, "dev", v2)
    assert registry.production(client, "dev").version == v2
    assert registry.production(client, "other") is None
