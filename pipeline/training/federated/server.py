"""The ServerApp: the house's training loop (pipeline/training/loop.py) with a federated round as
its step. It holds the global model and the central validation split (as an operator holds a
held-out set), samples each round's clients from a seeded stream, aggregates their replies in
client order with the configured Flower strategy, checkpoints every round, and leaves
models/trained/ exactly as centralized training does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from pipeline.core import atomic, catalog
from pipeline.core.config import Params
from pipeline.core.errors import TrainingError
from pipeline.data.prepare import load_processed
from pipeline.models.architecture import block_parameters
from pipeline.models.store import save_model, save_torch
from pipeline.models.tasks import task_for
from pipeline.training.checkpoint import canonical, latest_checkpoint, progress_fields, run_key
from pipeline.training.federated import job
from pipeline.training.federated.dp import epsilon
from pipeline.training.federated.strategies import Sampled, load_state, make_strategy, state_of
from pipeline.training.federated.weights import (
    architecture,
    initial_model,
    load_arrays,
    numpy_state,
    record_bytes,
    stream_seed,
    to_arrays,
)
from pipeline.training.loop import Finished, Loop, worker_arguments

app = ServerApp()


class FederatedEngine:
    """The loop's Engine for one federated job (the server is the one writer)."""

    rank, writer, steps = 0, True, 1

    def __init__(self, params: Params, grid: Grid) -> None:
        self.params, self.grid, self.fp = params, grid, params.train.federated
        data = load_processed(catalog.PROCESSED_DIR)
        self.meta = data.meta
        self.arch = architecture(params, catalog.PROCESSED_DIR)
        self.task = task_for(self.arch)
        self.model = initial_model(params, self.arch)
        self.x_val, self.y_val = torch.from_numpy(data.x["val"]), torch.from_numpy(data.y["val"])
        shards = catalog.read(catalog.PARTITIONS_FILE, catalog.Partitions, "prepare").clients
        self.world, self.samples = self.fp.clients, sum(c.train for c in shards)
        self.key = run_key(params.model_dump(mode="json"), data.meta.data_sha256, self.world, False)
        self.strategy = make_strategy(self.fp)
        self.nodes = discover(grid, self.fp.clients, self.fp.round_timeout)
        self.best_state: dict[str, torch.Tensor] = {}
        self.last: dict[str, float] = {}
        self.totals = {"bytes_sent_total": 0, "bytes_received_total": 0, "rounds_with_drops": 0}
        self.taken: dict[int, int] = {}  # client → rounds it took part in (for DP's epsilon)

    def describe(self) -> str:
        fp = self.fp
        part = fp.partition + (f" α={fp.alpha:g}" if fp.partition == "dirichlet" else "")
        return (f"train: federated ({fp.engine} engine), {fp.strategy}, {fp.clients} clients "
                f"({fp.sampled} per round, {fp.local_epochs} local epoch(s)), partition {part}, "
                f"{sum(block_parameters(self.arch)):,} parameters, {self.samples} training "
                "samples on the clients")  # fmt: skip

    def share(self, found: Any) -> Any:
        return found

    def find_checkpoint(self, ckpt_dir: Path, say: Any) -> Any:
        return latest_checkpoint(ckpt_dir, self.key, say)

    def restore(self, found: Any, ckpt_dir: Path) -> dict[str, Any]:
        self.model.load_state_dict(found["model"])
        load_state(self.strategy, _arrays(found["strategy"]))
        self.best_state, self.taken = found["best_state"], dict(found["taken"])
        return progress_fields(found)

    def sample(self, rnd: int) -> list[int]:
        """This round's clients: a seeded draw of train.federated.fraction of them, in order."""
        rng = np.random.default_rng(stream_seed(self.params.train.seed, rnd, 0x5A))
        chosen = sorted(int(c) for c in rng.choice(self.fp.clients, self.fp.sampled, replace=False))
        left_out = {c for r, c in job.pairs(job.LEAVE_OUT_ENV) if r == rnd}
        return [c for c in chosen if c not in left_out]

    def train_epoch(self, epoch: int, advance: Any) -> float:
        """One round: the sampled clients train; those that reply in time are aggregated in
        client order; a round with fewer than min_clients replies fails."""
        started, sampled = time.perf_counter(), self.sample(epoch)
        arrays = to_arrays(self.model)
        messages = list(self.strategy.configure_train(
            epoch, arrays, ConfigRecord({}), Sampled(self.nodes[c] for c in sampled)))  # fmt: skip
        replies = self._replies(messages, epoch, "train")
        sent = record_bytes(arrays) * len(messages)
        received = sum(record_bytes(r.content["arrays"]) for r in replies)
        aggregated, metrics = self.strategy.aggregate_train(epoch, replies)
        load_arrays(self.model, numpy_state(aggregated) | self._averaged_buffers(replies))
        for r in replies:
            client = int(r.content["metrics"]["client"])
            self.taken[client] = self.taken.get(client, 0) + 1
        evaluated = self._client_evaluation(
            epoch, [int(r.content["metrics"]["client"]) for r in replies]
        )
        self.totals["bytes_sent_total"] += sent
        self.totals["bytes_received_total"] += received
        self.last = {"clients_reported": len(replies), "clients_sampled": len(sampled),
                     "bytes_sent": sent, "bytes_received": received,
                     "round_seconds": time.perf_counter() - started, **evaluated}  # fmt: skip
        advance()
        return float(metrics["train_loss"]) if metrics else float("nan")

    def _averaged_buffers(self, replies: list[Message]) -> dict[str, np.ndarray]:
        """BatchNorm's running statistics as the plain sample-weighted mean of the replies:
        they are no parameters, and a server optimiser's momentum drove a running variance
        negative (NaN weights, found by the bench's FedAvgM run on digits at α = 0.1)."""
        from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

        buffers = {name for name, _ in self.model.named_buffers()}
        mean = aggregate_arrayrecords([r.content for r in replies], "num-examples")
        return {k: v for k, v in numpy_state(mean).items() if k in buffers}

    def _replies(self, messages: list[Message], rnd: int, what: str) -> list[Message]:
        """The replies that came back in time without error, in client order."""
        replies = list(self.grid.send_and_receive(messages, timeout=self.fp.round_timeout))
        good = sorted((r for r in replies if not r.has_error()),
                      key=lambda r: int(r.content["metrics"]["client"]))  # fmt: skip
        by_node = {v: k for k, v in self.nodes.items()}
        got = {r.metadata.src_node_id for r in good}
        for m in messages:
            if m.metadata.dst_node_id not in got:
                why = next((r.error.reason for r in replies if r.has_error()
                            and r.metadata.src_node_id == m.metadata.dst_node_id),
                           f"no reply within {self.fp.round_timeout} s")  # fmt: skip
                print(f"round {rnd}: client {by_node.get(m.metadata.dst_node_id, '?')} dropped "
                      f"from {what} ({why.strip().splitlines()[-1][:200]})", flush=True)  # fmt: skip
        if what == "train" and len(good) < self.fp.min_clients:
            raise TrainingError(
                f"round {rnd}: {len(good)} of {len(messages)} sampled clients replied, fewer than "
                f"train.federated.min_clients {self.fp.min_clients}; the round cannot aggregate"
            )
        if what == "train" and len(good) < len(messages):
            self.totals["rounds_with_drops"] += 1
        return good

    def _client_evaluation(self, rnd: int, clients: list[int]) -> dict[str, float]:
        """The new global model on the clients' own validation samples: weighted, and worst."""
        record = RecordDict(
            {"arrays": to_arrays(self.model), "config": ConfigRecord({"server-round": rnd})}
        )
        messages = [Message(record, self.nodes[c], MessageType.EVALUATE) for c in clients]
        rows = [r.content["metrics"] for r in self._replies(messages, rnd, "evaluation")]
        total = sum(int(m["num-examples"]) for m in rows)
        if not total:
            return {}
        return {
            "clients_val_accuracy": sum(m["val_accuracy"] * m["num-examples"] for m in rows)
            / total,
            "clients_val_loss": sum(m["val_loss"] * m["num-examples"] for m in rows) / total,
            "clients_val_accuracy_worst": min(m["val_accuracy"] for m in rows),
        }

    def evaluate(self) -> tuple[float, float]:
        """The global model on the central validation split."""
        self.model.eval()
        with torch.no_grad():
            loss, correct, n = self.task.evaluate(self.model(self.x_val), self.x_val, self.y_val)
        return loss / max(n, 1), correct / max(n, 1)

    def lr(self) -> float:
        return self.params.train.lr

    def step_metrics(self) -> dict[str, float]:
        return dict(self.last)

    def snapshot_best(self) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save_checkpoint(self, path: Path, fields: dict[str, Any]) -> None:
        save_torch(canonical({
            "epoch": fields["epoch"], "history": fields["history"], "best": fields["best"],
            "stale": fields["stale"], "key": fields["key"], "scheduler": {},
            "model": self.model.state_dict(), "best_state": self.best_state,
            "strategy": _tensors(state_of(self.strategy)), "taken": dict(sorted(self.taken.items())),
        }), path.with_name(path.name + ".pt"))  # fmt: skip

    def finish(self, trained_dir: Path, best_epoch: int) -> Finished:
        save_model(trained_dir, self.arch, self.best_state, self.meta.model_dump(), best_epoch)
        fp = self.fp
        summary: dict[str, Any] = {
            "framework": "torch", "parameters": sum(block_parameters(self.arch)),
            "parallelism": "federated",
            "strategy": f"{fp.strategy}: {fp.clients} clients, {fp.partition}",
            "clients": fp.clients, "federated_strategy": fp.strategy,
            "partition": fp.partition, **self.totals,
        }  # fmt: skip
        if fp.dp.clip is not None:
            most = max(self.taken.values(), default=0)
            summary["dp_epsilon"] = round(epsilon(most, fp.dp.noise_multiplier, fp.dp.delta), 4)
            summary["dp_delta"] = fp.dp.delta
        return Finished(summary, {})


def discover(grid: Grid, clients: int, timeout: float) -> dict[int, int]:
    """client number → Flower node id (node ids are random): every node is asked once."""
    from pipeline.core.procs import wait_until

    def connected() -> list[int] | None:
        ids = list(grid.get_node_ids())
        return ids if len(ids) >= clients else None

    nodes = wait_until(connected, timeout, f"{clients} Flower clients to connect", interval=0.5)
    asked = [Message(RecordDict({}), n, MessageType.QUERY) for n in nodes]
    replies = [r for r in grid.send_and_receive(asked, timeout=timeout) if not r.has_error()]
    found = {int(r.content["metrics"]["client"]): r.metadata.src_node_id for r in replies}
    missing = sorted(set(range(clients)) - set(found))
    if missing:
        raise TrainingError(f"federated clients {missing} did not answer within {timeout:g} s")
    return found


def _tensors(obj: Any) -> Any:
    """numpy arrays as tensors, so a checkpoint loads with torch.load(weights_only=True)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _tensors(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tensors(v) for v in obj]
    return obj


def _arrays(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_arrays(v) for v in obj]
    return obj


FAILURE: list[BaseException] = []  # what ended the ServerApp, for the engine's driver to report


@app.main()
def main(grid: Grid, context: Context) -> None:
    here = job.current()
    os.chdir(here.workspace)
    _quiet_flower()
    try:
        Loop(FederatedEngine(here.params, grid), here.params, worker_arguments("server", [])).run()
    except BaseException as exc:
        FAILURE.append(exc)
        _status(f"{type(exc).__name__}: {exc}")
        raise
    _status("")


def _status(error: str) -> None:
    """How the ServerApp ended, for the deployment engine's driver (another process)."""
    atomic.write_json(catalog.FLOWER_STATUS, {"ok": not error, "error": error})


def _quiet_flower() -> None:
    """Flower logs every sampling and aggregation (and run_simulation's deprecation) at INFO and
    WARNING; the loop's lines, and its own line per dropped client, say what matters."""
    import logging

    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.ERROR)
