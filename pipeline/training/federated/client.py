"""The ClientApp: what one edge client does with a message, in whatever process Flower runs it
(a Ray actor, or a process its SuperNode spawns). It reads its own shard and nothing else of the
data, trains the global model it was sent for train.federated.local_epochs, and sends back
weights and figures, never samples.

Every client-round is seeded from (train.seed, round, client), so a round's replies do not
depend on which process served them, on arrival order, or on what ran before: the property the
drop, resume and engine-agreement tests rest on.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pipeline.core import catalog
from pipeline.data.partition import load_shard
from pipeline.models.tasks import task_for
from pipeline.training.federated import job
from pipeline.training.federated.dp import privatize
from pipeline.training.federated.weights import (
    architecture,
    initial_model,
    load_arrays,
    numpy_state,
    stream_seed,
    to_arrays,
)
from pipeline.training.strategy import make_optimizer

app = ClientApp()


def _client(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _model(msg: Message) -> tuple[torch.nn.Module, object]:
    here = job.current()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(here.params.train.deterministic)
    arch = architecture(here.params, here.path(catalog.PROCESSED_DIR))
    model = initial_model(here.params, arch)
    load_arrays(model, numpy_state(msg.content["arrays"]))
    return model, arch


@app.query()
def whoami(msg: Message, context: Context) -> Message:
    """The server maps Flower's random node ids to client numbers with this."""
    return Message(RecordDict({"metrics": MetricRecord({"client": _client(context)})}),
                   reply_to=msg)  # fmt: skip


@app.train()
def train(msg: Message, context: Context) -> Message:
    here, client = job.current(), _client(context)
    config = msg.content["config"]
    rnd = int(config["server-round"])
    if (rnd, client) in job.pairs(job.FAIL_ENV):
        raise RuntimeError(f"client {client} failed in round {rnd} (injected: {job.FAIL_ENV})")
    model, arch = _model(msg)
    shard = load_shard(client, here.path(catalog.CLIENTS_DIR))
    start = {k: v.copy() for k, v in numpy_state(msg.content["arrays"]).items()}
    loss, n = _local_training(
        model, arch, shard, rnd, client, float(config.get("proximal-mu", 0.0))
    )
    after = numpy_state(to_arrays(model))
    dp = here.params.train.federated.dp
    if dp.clip is not None:
        update = privatize({k: after[k] - start[k] for k in after}, dp.clip, dp.noise_multiplier,
                           stream_seed(here.params.train.seed, rnd, client, 0xD9))  # fmt: skip
        load_arrays(model, {k: start[k] + update[k] for k in update})
    metrics = MetricRecord({"num-examples": n, "train_loss": loss, "client": client})
    return Message(RecordDict({"arrays": to_arrays(model), "metrics": metrics}), reply_to=msg)


def _local_training(model: torch.nn.Module, arch: object, shard: dict[str, np.ndarray], rnd: int,
                    client: int, mu: float) -> tuple[float, int]:  # fmt: skip
    """local_epochs passes over this client's seeded batches; FedProx adds (mu/2)·||w − w₀||²."""
    tp = job.current().params.train
    task = task_for(arch)
    rows = task.training_rows(shard["y_train"])
    x, y = torch.from_numpy(shard["x_train"][rows]), torch.from_numpy(shard["y_train"][rows])
    anchor = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model, tp.lr, tp.weight_decay)
    gen = torch.Generator().manual_seed(stream_seed(tp.seed, rnd, client))
    torch.manual_seed(stream_seed(tp.seed, rnd, client, 1))  # dropout
    model.train()
    total, count = 0.0, 0
    for _ in range(tp.federated.local_epochs):
        for idx in torch.randperm(len(y), generator=gen).split(tp.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(x[idx]), x[idx], y[idx])
            if mu > 0:
                pairs = zip(model.parameters(), anchor, strict=True)
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in pairs)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
    return total / max(count, 1), len(y)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global model on this client's own validation samples."""
    here, client = job.current(), _client(context)
    model, arch = _model(msg)
    shard = load_shard(client, here.path(catalog.CLIENTS_DIR))
    x, y = torch.from_numpy(shard["x_val"]), torch.from_numpy(shard["y_val"])
    model.eval()
    with torch.no_grad():
        loss_sum, correct, n = task_for(arch).evaluate(model(x), x, y)
    metrics = MetricRecord({"num-examples": n, "val_loss": loss_sum / max(n, 1),
                            "val_accuracy": correct / max(n, 1), "client": client})  # fmt: skip
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
