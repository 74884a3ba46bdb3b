"""The training split cut into client shards (train.federated.partition), written by prepare.

Numpy only. Each partitioner is a plain function of the labels (and owners), the settings and a
seeded generator, so the same seed and data give the same shards. Every client's shard keeps
a local validation share of its own; the central validation split stays with the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.core import catalog
from pipeline.core.config import FederatedParams
from pipeline.core.errors import DataValidationError

Partitioner = Callable[[np.ndarray, tuple[str, ...], FederatedParams, np.random.Generator],
                       list[np.ndarray]]  # fmt: skip


def iid(y: np.ndarray, owners: tuple[str, ...], fp: FederatedParams,
        rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """Shuffled, then cut into equal shares."""
    return list(np.array_split(rng.permutation(len(y)), fp.clients))


def dirichlet(y: np.ndarray, owners: tuple[str, ...], fp: FederatedParams,
              rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """Each class's samples spread over the clients in Dirichlet(alpha) proportions (Hsu et
    al. 2019): alpha 100 is nearly IID, 0.1 leaves most clients one or two classes."""
    shards: list[list[np.ndarray]] = [[] for _ in range(fp.clients)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        share = rng.dirichlet(np.full(fp.clients, fp.alpha))
        cuts = (np.cumsum(share)[:-1] * len(members)).round().astype(int)
        for client, part in enumerate(np.split(members, cuts)):
            shards[client].append(part)
    return [np.concatenate(parts) for parts in shards]


def by_class(y: np.ndarray, owners: tuple[str, ...], fp: FederatedParams,
             rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """Client i holds classes i·k … i·k+k-1 (mod the class count), each class's samples split
    evenly among the clients that hold it: the pathological non-IID case (Zhao et al. 2018)."""
    labels = np.unique(y)
    if fp.classes_per_client > len(labels):
        raise DataValidationError(
            f"train.federated.classes_per_client {fp.classes_per_client} is more than the "
            f"{len(labels)} classes of the training split"
        )
    held = [[labels[(i * fp.classes_per_client + j) % len(labels)]
             for j in range(fp.classes_per_client)] for i in range(fp.clients)]  # fmt: skip
    shards: list[list[np.ndarray]] = [[] for _ in range(fp.clients)]
    for label in labels:
        holders = [i for i, mine in enumerate(held) if label in mine]
        members = rng.permutation(np.flatnonzero(y == label))
        for client, part in zip(holders, np.array_split(members, max(1, len(holders))),
                                strict=False):  # fmt: skip
            shards[client].append(part)
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in shards]


def natural(y: np.ndarray, owners: tuple[str, ...], fp: FederatedParams,
            rng: np.random.Generator) -> list[np.ndarray]:  # fmt: skip
    """One client per owner named in the data (sorted owner names), as the data was collected."""
    if not owners:
        raise DataValidationError(
            "train.federated.partition natural: the data names no owner (a `subject` or `owner` "
            "array in the series_npz file); use partition iid, dirichlet or by_class"
        )
    names = sorted(set(owners))
    if len(names) != fp.clients:
        raise DataValidationError(
            f"train.federated.partition natural gives one client per owner: the training split "
            f"has {len(names)} owners, train.federated.clients is {fp.clients}; set it to "
            f"{len(names)}"
        )
    column = np.asarray(owners)
    return [np.flatnonzero(column == name) for name in names]


SHARD_ARRAYS = ("x_train", "y_train", "x_val", "y_val")

PARTITIONERS: dict[str, Partitioner] = {
    "iid": iid, "dirichlet": dirichlet, "by_class": by_class, "natural": natural,
}  # fmt: skip


def local_split(members: np.ndarray, fraction: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """A client's own training and validation indices (at least one validation sample when it
    holds two or more)."""
    members = rng.permutation(members)
    n_val = min(len(members) - 1, max(1, round(fraction * len(members)))) if len(members) > 1 else 0
    return np.sort(members[n_val:]), np.sort(members[:n_val])


def partition(y: np.ndarray, owners: tuple[str, ...], fp: FederatedParams,
              seed: int) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """Each client's (training, validation) indices into the training split; a client left
    with fewer than min_samples training samples is refused, naming it and its count."""
    rng = np.random.default_rng([seed, 0xFED])
    shards = [local_split(s, fp.local_val_fraction, rng)
              for s in PARTITIONERS[fp.partition](y, owners, fp, rng)]  # fmt: skip
    short = [(i, len(train)) for i, (train, _) in enumerate(shards) if len(train) < fp.min_samples]
    if short:
        listed = ", ".join(f"client {i} has {n}" for i, n in short[:5])
        raise DataValidationError(
            f"train.federated.partition {fp.partition}"
            + (f" (alpha {fp.alpha})" if fp.partition == "dirichlet" else "")
            + f" leaves {len(short)} client(s) with fewer than train.federated.min_samples "
            f"{fp.min_samples} training samples ({listed}). Use fewer clients, a larger alpha, "
            "or a lower min_samples"
        )
    return shards


def write_shards(out_dir: Path, x: np.ndarray, y: np.ndarray, owners: tuple[str, ...],
                 classes: list[str], fp: FederatedParams, seed: int) -> catalog.Partitions:  # fmt: skip
    """The client shards and partitions.json under out_dir (prepare's folder being written)."""
    clients_dir = out_dir / catalog.CLIENTS_DIR.name
    clients_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (train, val) in enumerate(partition(y, owners, fp, seed)):
        shard = catalog.client_shard(i, clients_dir)
        shard.mkdir()
        for name, rows_of in (("train", train), ("val", val)):
            np.save(shard / f"x_{name}.npy", x[rows_of], allow_pickle=False)
            np.save(shard / f"y_{name}.npy", y[rows_of], allow_pickle=False)
        counts = np.bincount(y[train], minlength=len(classes))
        rows.append(catalog.ClientShard(
            client=i, train=len(train), val=len(val),
            labels={c: int(n) for c, n in zip(classes, counts, strict=True)},
            owner=owners[train[0]] if owners and len(train) else "",
        ))  # fmt: skip
    settings = {"alpha": fp.alpha} if fp.partition == "dirichlet" else {}
    if fp.partition == "by_class":
        settings = {"classes_per_client": fp.classes_per_client}
    result = catalog.Partitions(partition=fp.partition, clients=rows, seed=seed, settings=settings)
    catalog.write(clients_dir / catalog.PARTITIONS_FILE.name, result)
    return result


def write_whole(out_dir: Path, y: np.ndarray, classes: list[str], seed: int) -> catalog.Partitions:
    """Centralized training: partitions.json with one holder of the whole training split (its
    label histogram is what the report plots), and no shards."""
    clients_dir = out_dir / catalog.CLIENTS_DIR.name
    clients_dir.mkdir(parents=True, exist_ok=True)
    counts = np.bincount(y, minlength=len(classes))
    row = catalog.ClientShard(client=0, train=len(y), val=0,
                              labels={c: int(n) for c, n in zip(classes, counts, strict=True)})  # fmt: skip
    result = catalog.Partitions(partition="centralized", clients=[row], seed=seed)
    catalog.write(clients_dir / catalog.PARTITIONS_FILE.name, result)
    return result


def load_shard(client: int, clients_dir: Path = catalog.CLIENTS_DIR) -> dict[str, np.ndarray]:
    """One client's own arrays: all a client process ever reads of the data."""
    path = catalog.client_shard(client, clients_dir)
    try:
        return {k: np.load(path / f"{k}.npy", allow_pickle=False) for k in SHARD_ARRAYS}
    except (OSError, ValueError) as exc:
        raise DataValidationError(
            f"{path}: client {client}'s shard is unreadable ({exc}); rerun `tinyops stage prepare`"
        ) from None
