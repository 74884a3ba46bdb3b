"""Figures more than one stage draws, as reproducible PNG bytes (matplotlib imported only when
one is drawn)."""

from __future__ import annotations

import io
from typing import Any

from pipeline.core.catalog import Partitions


def png(fig: Any) -> bytes:
    """The figure as PNG bytes with no timestamp or software stamp (reproducible), closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def partition_chart(parts: Partitions) -> bytes:
    """Each client's training samples per class, stacked (centralized: the one holder): how
    non-IID the clients are, at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = parts.clients
    classes = list(clients[0].labels) if clients else []
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    bottom = [0] * len(clients)
    for name in classes:
        counts = [c.labels.get(name, 0) for c in clients]
        ax.bar(range(len(clients)), counts, bottom=bottom, label=name, width=0.8)
        bottom = [b + n for b, n in zip(bottom, counts, strict=True)]
    ax.set_xlabel("client" if parts.partition != "centralized" else "the one data holder")
    ax.set_ylabel("training samples")
    ax.set_title(f"Training samples per class and client ({parts.partition})")
    if len(classes) <= 12:
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    return png(fig)
