"""The registry's decision: champion against challenger on the same test split, lineage first;
and versions registered through a real MLflow store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import tracking
from pipeline.core.errors import RegistryContention
from pipeline.deploy import champion, registry
from pipeline.deploy.champion import Champion
from tests.conftest import REPO


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


def test_a_retrain_is_also_judged_on_the_split_production_was_promoted_on() -> None:
    """Field data moved the test split: the challenger wins the new split (0.97 vs 0.95) but on
    production's own split it scores 0.90 where production scored 0.99: refused."""
    forgot = champion.HeldOut(0.90, 0.99, "ab" * 32)
    refused = champion.decide(0.97, _champion(0.95), 0.005, held=forgot)
    assert not refused.promote and refused.previous_version == "3"
    assert (
        "on the test split production v3 was promoted on (abababababab), 0.9000 vs its "
        "0.9900: lower by more than the tolerance 0.005" in refused.reason
    ), refused.reason
    kept = champion.decide(
        0.97, _champion(0.95), 0.005, held=champion.HeldOut(0.986, 0.99, "ab" * 32)
    )
    assert kept.promote and "0.9860 vs its 0.9900" in kept.reason


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


def test_production_moved_since_judging_is_refused_and_the_version_says_so(
    mlflow_store: str, tmp_path: Path
) -> None:
    """A teammate promoted v2 while this deploy judged v3 against v1: v3 is not promoted."""
    client = tracking.client()
    v1 = _version(client, "dev", 0.90, tmp_path)
    registry.promote(client, "dev", v1)
    v2, v3 = _version(client, "dev", 0.93, tmp_path), _version(client, "dev", 0.92, tmp_path)
    with registry.promotion_lock(client, "dev"):
        registry.require_unmoved(client, "dev", v2, v1)
        registry.promote(client, "dev", v2)
    with pytest.raises(RegistryContention) as refused, registry.promotion_lock(client, "dev"):
        registry.require_unmoved(client, "dev", v3, v1)
    assert f"production moved to v{v2} while v{v3} was judged against v{v1}" in str(refused.value)
    assert f"Deploy again to judge it against v{v2}" in str(refused.value)
    assert str(registry.production(client, "dev").version) == str(v2)
    assert client.get_model_version("tinyops-dev", v3).description.startswith("Not promoted:")
    assert not client.search_registered_models(f"name = '{registry.lock_name('dev')}'")


def test_two_deploys_racing_never_both_win(mlflow_store: str, tmp_path: Path) -> None:
    """Two processes judge their versions against the same production, then both try to move
    the alias at the same moment: exactly one is promoted, the other refused."""
    race_two_deploys(tmp_path)


def race_two_deploys(tmp_path: Path) -> None:
    """The race, against whatever store the environment names (tests/team runs it against the
    team stack's tracking server)."""
    client = tracking.client()
    registry.promote(client, "dev", _version(client, "dev", 0.90, tmp_path))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    job = Path(__file__).with_name("race_job.py")
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    racers = [
        subprocess.Popen([sys.executable, str(job), name, str(barrier)], cwd=REPO, **out)
        for name in ("alice", "bob")
    ]
    said = [r.communicate(timeout=120)[0] for r in racers]
    assert all(r.returncode == 0 for r in racers), [s[-3000:] for s in said]
    outs = [s.strip().splitlines()[-1] for s in said]
    assert sorted(o.split()[0] for o in outs) == ["promoted", "refused"], outs
    (winner,) = [o.split()[1] for o in outs if o.startswith("promoted")]
    assert str(registry.production(client, "dev").version) == winner
    assert not client.search_registered_models(f"name = '{registry.lock_name('dev')}'")


def test_a_lock_left_by_a_killed_deploy_names_its_holder_and_unlock_removes_it(
    mlflow_store: str, tmp_path: Path
) -> None:
    client = tracking.client()
    v1 = _version(client, "dev", 0.90, tmp_path)
    name = registry.lock_name("dev")
    client.create_registered_model(name, tags={"holder": "ci-box pid 4242"})  # killed mid-move
    with pytest.raises(RegistryContention) as held, registry.promotion_lock(client, "dev", 0.3):
        pass
    assert "held by ci-box pid 4242 for over 0.3 s" in str(held.value)
    assert "`tinyops unlock dev` removes it" in str(held.value)
    assert registry.unlock(client, "dev") == "ci-box pid 4242"
    assert registry.unlock(client, "dev") is None
    with registry.promotion_lock(client, "dev", 0.3):
        registry.require_unmoved(client, "dev", v1, None)
        registry.promote(client, "dev", v1)
    assert str(registry.production(client, "dev").version) == str(v1)


def test_a_bundle_the_store_lost_is_a_registry_error_naming_the_version(
    mlflow_store: str, tmp_path: Path
) -> None:
    """A shared artifact store that no longer holds production's bundle: deploy and rollback
    refuse, naming the version and where it was looked for, instead of MLflow's traceback."""
    import shutil
    from urllib.parse import urlsplit

    from pipeline.core.errors import RegistryError

    client = tracking.client()
    v1 = _version(client, "dev", 0.90, tmp_path)
    version = client.get_model_version("tinyops-dev", v1)
    shutil.rmtree(urlsplit(version.source).path)
    with pytest.raises(RegistryError) as err:
        registry.download_bundle(client, version, tmp_path / "got")
    said = str(err.value)
    assert f"tinyops-dev v{v1}: its bundle cannot be read" in said, said
    assert version.source in said and "No such" in said, said
    assert "tinyops promote dev VERSION" in said, said
