"""What counts as new: raw data content, validated params, code; and `dvc add` of new raw data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import load_params
from pipeline.orchestration.freshness import changes, fingerprint, record_success, unchanged
from pipeline.orchestration.ingest import ingest_raw
from tests.conftest import REPO, make_workspace, run_cmd


@pytest.fixture()
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ws = make_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws)
    return ws


def _fp(ws: Path):  # type: ignore[no-untyped-def]
    return fingerprint(load_params(ws / "params.yaml"))


def test_fingerprint_follows_content_not_formatting(ws: Path) -> None:
    fp = _fp(ws)
    record_success(fp, mlflow_run_id="r1")
    assert unchanged(fp)["mlflow_run_id"] == "r1"
    text = (ws / "params.yaml").read_text()
    (ws / "params.yaml").write_text("# a comment only\n" + text)  # same validated params
    os.utime(ws / "data/raw/README.md")  # touched, same bytes
    assert _fp(ws) == fp

    (ws / "data/raw/new.npz").write_bytes(b"new data")
    assert changes(_fp(ws)) == ["data changed"]
    with_new = _fp(ws).data
    (ws / "data/raw/new.npz.dvc").write_text("outs: []\n")  # DVC's own files are not data
    (ws / "data/raw/.gitignore").write_text("/new.npz\n")
    assert _fp(ws).data == with_new
    (ws / "data/raw/new.npz").write_bytes(b"other data")
    assert _fp(ws).data not in (with_new, fp.data)

    params = yaml.safe_load(text)
    params["train"]["epochs"] = 3
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    assert "params changed" in changes(_fp(ws))
    (ws / "pipeline/models/cnn2d.py").write_text(
        (ws / "pipeline/models/cnn2d.py").read_text() + "\n# edit\n"
    )
    assert changes(_fp(ws)) == ["data changed", "params changed", "code changed"]


def test_no_record_means_run(ws: Path) -> None:
    assert unchanged(_fp(ws)) is None
    assert changes(_fp(ws)) == ["no successful run recorded in this workspace"]


def test_data_outside_raw_is_hashed_too(ws: Path, tmp_path: Path) -> None:
    data = tmp_path / "elsewhere.npz"
    data.write_bytes(b"v1")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["prepare"] |= {"source": "npz", "path": str(data)}
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    fp = _fp(ws)
    data.write_bytes(b"v2")
    assert _fp(ws).data != fp.data


def test_ingest_versions_new_and_changed_raw_data_with_dvc(ws: Path) -> None:
    run_cmd(["dvc", "init", "-q", "-f"], ws)
    images = ws / "data/raw/images/cat"
    images.mkdir(parents=True)
    shutil.copy(REPO / "tests/cpp/dump_bundle.cc", images / "a.bin")
    (ws / "data/raw/extra.npz").write_bytes(b"first")
    lines: list[str] = []
    assert ingest_raw(on_line=lines.append) == ["data/raw/extra.npz", "data/raw/images"]
    assert "new raw data, versioning with dvc add" in lines[0]
    assert ingest_raw() == [], "unchanged: nothing to add"
    (ws / "data/raw/extra.npz").write_bytes(b"second")
    assert ingest_raw() == ["data/raw/extra.npz"]
    ignored = (ws / "data/raw/.gitignore").read_text().split()
    assert sorted(ignored) == ["/extra.npz", "/images"]
    assert "outs" in (ws / "data/raw/extra.npz.dvc").read_text()
    cached = [p for p in (ws / ".dvc/cache").rglob("*") if p.is_file()]
    assert any(p.read_bytes() == b"first" for p in cached), "the old version stays in the cache"
    assert any(p.read_bytes() == b"second" for p in cached)
    assert not (ws / "data/raw/README.md.dvc").exists()
