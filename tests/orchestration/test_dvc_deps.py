"""dvc.yaml's deps are complete: every project module a stage's command loads, in any of its
processes (torchrun workers, export subprocesses), is covered by that stage's deps, so changing
it reruns the stage. The session's end-to-end run recorded each process's modules
(tests/import_recorder); this test rebuilds the process tree from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import IMPORT_LOG, REPO

pytestmark = pytest.mark.slow


def _records(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _stage_target(argv: list[str]) -> str | None:
    """`tinyops stage deploy --device x` → deploy@x; None for any other process."""
    if len(argv) < 3 or Path(argv[0]).name != "tinyops" or argv[1] != "stage":
        return None
    if "--device" in argv:
        return f"{argv[2]}@{argv[argv.index('--device') + 1]}"
    return argv[2]


def _project_file(file: str | None, roots: tuple[Path, ...]) -> str | None:
    """pipeline/… or flows/… relative to the checkout or the workspace copy (a torchrun worker
    started with `-m` imports the copy in its working directory); None for anything else and
    for empty package __init__ files, which carry no code."""
    path = Path(file or "")
    for root in roots:
        if path.is_file() and path.is_relative_to(root) and path.stat().st_size > 0:
            rel = path.relative_to(root).as_posix()
            return rel if rel.startswith(("pipeline/", "flows/")) else None
    return None


def loaded_by_stage(records: list[dict], ws: Path) -> dict[str, set[str]]:
    """Project source files each stage loaded, its descendants' included. TFLite Micro's
    forkserver outlives its stage and is re-parented away; it preloads only what the stage
    itself had loaded (pipeline.tflite.tflm)."""
    by_pid = {r["pid"]: r for r in records}
    out: dict[str, set[str]] = {}
    for r in records:
        node, target = r, None
        while node is not None and target is None:
            target = _stage_target(node["argv"])
            node = by_pid.get(node["ppid"])
        if target is None:
            continue
        files = {_project_file(f, (REPO, ws)) for f in r["modules"].values()}
        out.setdefault(target, set()).update(f for f in files if f)
    return out


def stage_deps(dvc_yaml: dict, target: str) -> list[str]:
    stage = dvc_yaml["stages"][target.split("@")[0]]
    return (stage.get("do") or stage)["deps"]


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    """Files that no dep (a file, or a folder holding it) covers."""
    return sorted(
        f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)
    )


def test_every_module_a_stage_loads_is_in_its_deps(pipeline_ws: Path) -> None:
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    loaded = loaded_by_stage(_records(pipeline_ws / IMPORT_LOG), pipeline_ws)
    names = {t.split("@")[0] for t in loaded}
    assert names == set(dvc_yaml["stages"]), f"stages seen running: {sorted(loaded)}"
    assert any("pipeline/training/worker.py" in f for f in loaded["train"]), "workers recorded"
    missing = {t: uncovered(files, stage_deps(dvc_yaml, t)) for t, files in loaded.items()}
    assert not any(missing.values()), {t: m for t, m in missing.items() if m}


def test_a_removed_deps_line_is_caught(pipeline_ws: Path) -> None:
    """The check has teeth: without `pipeline/core` (or the stage's own folder) in its deps,
    each stage is reported with the modules it lost."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    loaded = loaded_by_stage(_records(pipeline_ws / IMPORT_LOG), pipeline_ws)
    for target, files in loaded.items():
        deps = [d for d in stage_deps(dvc_yaml, target) if d != "pipeline/core"]
        assert "pipeline/core/catalog.py" in uncovered(files, deps), target
    deps = [d for d in stage_deps(dvc_yaml, "train") if d != "pipeline/training"]
    assert "pipeline/training/shm_allreduce.py" in uncovered(loaded["train"], deps)
