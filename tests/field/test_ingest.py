"""Field batches stored whole, in arrival order, once; tokens kept hashed and revocable."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.errors import FieldRefusal
from pipeline.field.store import LEDGER, FieldStore, read
from tests.conftest import REPO, tree_digest
from tests.field.conftest import MCU, PI, SHA, Field, batch


def test_a_batch_is_stored_whole_with_its_int8_arrays_and_labels(field: Field) -> None:
    first = field.store.ingest(batch("a1"), token_device=MCU)
    second = field.store.ingest(batch("a2", n=2, labels=None), token_device=MCU)
    assert (first.seq, second.seq) == (1, 2) and first.path.name == "00000001-a1.npz"
    stored = read(field.root / MCU / first.path.name)
    assert stored["samples"].dtype == np.int8 and stored["samples"].shape == (4, 8, 8, 1)
    assert stored["samples"][1, 0, 0, 0] == -2 and stored["outputs"].dtype == np.int8
    assert stored["labels"].tolist() == [0, 1, 2, 3] and str(stored["model_sha256"]) == SHA
    assert read(field.root / MCU / second.path.name)["labels"].tolist() == [-1, -1]
    assert (field.root / MCU / LEDGER).read_text() == "1 a1\n2 a2\n"
    pi = read(field.store.ingest(batch("p1", device=PI), token_device=PI).path)
    assert pi["samples"].dtype == np.float32  # a float bundle takes floats


def test_tokens_are_kept_hashed_owner_only_and_a_revoked_one_is_refused(field: Field) -> None:
    text = field.tokens.path.read_text()
    secret = field.token[MCU].split("_", 2)[2]  # url-safe: it may hold "_" itself
    assert field.token[MCU] not in text and secret not in text
    assert field.tokens.path.stat().st_mode & 0o777 == 0o600
    assert field.tokens.device_of(field.token[MCU]) == MCU
    token_id = field.token[MCU].split("_")[1]
    assert field.tokens.revoke(token_id) == [token_id]
    with pytest.raises(FieldRefusal, match="revoked") as refused:
        field.tokens.device_of(field.token[MCU])
    assert refused.value.http_status == 401
    with pytest.raises(FieldRefusal, match="unknown token"):
        field.tokens.device_of(field.token[PI][:-1] + "x")
    assert field.tokens.device_of(field.token[PI]) == PI  # the other device's stays active


def _ingest_many(
    cwd: str, prefix: str, count: int, start: multiprocessing.synchronize.Event
) -> None:
    os.chdir(cwd)
    store = FieldStore()
    start.wait()
    for i in range(count):
        store.ingest(batch(f"{prefix}{i}", n=8))


def test_two_processes_ingesting_at_once_never_interleave_or_lose_a_batch(field: Field) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_ingest_many, args=(os.getcwd(), p, 30, start)) for p in "xy"]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    files = sorted((field.root / MCU).glob("*.npz"))
    assert len(files) == 60 and [int(f.name[:8]) for f in files] == list(range(1, 61))
    assert all(read(f)["samples"].shape == (8, 8, 8, 1) for f in files)
    ledger = (field.root / MCU / LEDGER).read_text().splitlines()
    assert sorted(ledger) == sorted(f"{int(f.name[:8])} {f.stem[9:]}" for f in files)


def test_a_lost_ledger_line_is_caught_up_and_a_replay_still_refused(field: Field) -> None:
    field.store.ingest(batch("b1"))
    (field.root / MCU / LEDGER).write_text("")  # as if the process died before its line
    fresh = FieldStore()
    with pytest.raises(FieldRefusal, match="stored already"):
        fresh.ingest(batch("b1"))
    assert fresh.ingest(batch("b2")).seq == 2
    (field.root / MCU / LEDGER).write_text("1 b1\n")  # b2's process died before its line
    assert FieldStore().ingest(batch("b3")).seq == 3  # not a second seq 2
    with pytest.raises(FieldRefusal, match="stored already"):
        FieldStore().ingest(batch("b2"))


def test_the_cli_ingests_a_file_and_refuses_a_bad_one_writing_nothing(
    field: Field, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(batch("c1")))
    bad.write_text(json.dumps(batch("c2", samples=[[[[float("nan")]] * 8] * 8] * 4)))
    runner = CliRunner()
    done = runner.invoke(app, ["field", "ingest", str(good)])
    assert done.exit_code == 0 and "stored 4 samples" in done.output, done.output
    before = tree_digest(field.root)
    refused = runner.invoke(app, ["field", "ingest", str(bad)])
    assert refused.exit_code == 15 and f"{bad}: samples: NaN" in refused.output, refused.output
    assert tree_digest(field.root) == before


def test_a_token_is_issued_only_for_a_known_device(field: Field) -> None:
    (Path.cwd() / "params.yaml").write_text((REPO / "params.yaml").read_text())
    runner = CliRunner()
    wrong = runner.invoke(app, ["field", "token", "issue", "stm32f764"])
    assert wrong.exit_code == 2 and "Did you mean 'stm32f746'" in wrong.output, wrong.output
    issued = runner.invoke(app, ["field", "token", "issue", MCU])
    assert issued.exit_code == 0 and field.tokens.device_of(issued.output.strip()) == MCU
    listed = runner.invoke(app, ["field", "token", "list"]).output
    assert listed.count(MCU) == 2 and issued.output.strip() not in listed
