"""train.federated.dp: client-side clipping and Gaussian noise, and the epsilon it buys.

Each sampled client clips its update (its weights minus the global ones) to L2 norm `clip` and
adds N(0, (noise_multiplier·clip)²) to every coordinate before the update leaves it: local,
client-level differential privacy, needing no trust in the server. The guarantee is accounted
with Rényi DP of the Gaussian mechanism (Mironov 2017): α/(2σ²) per round a client takes part,
composed over the rounds, converted to (ε, δ). No amplification by sampling is claimed, so the
figure is an upper bound for fraction < 1.
"""

from __future__ import annotations

import numpy as np

ORDERS = np.concatenate([np.linspace(1.1, 10.9, 99), np.arange(11, 257)])


def privatize(update: dict[str, np.ndarray], clip: float, noise_multiplier: float,
              seed: int) -> dict[str, np.ndarray]:  # fmt: skip
    """The update clipped to `clip` in L2 norm over all arrays, plus seeded Gaussian noise."""
    norm = float(
        np.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update.values()))
    )
    scale = min(1.0, clip / max(norm, 1e-12))
    rng = np.random.default_rng(seed)
    sigma = noise_multiplier * clip
    return {k: (u * scale + rng.normal(0.0, sigma, u.shape)).astype(u.dtype)
            for k, u in sorted(update.items())}  # fmt: skip


def epsilon(rounds: int, noise_multiplier: float, delta: float) -> float:
    """ε after a client took part in `rounds` rounds: min over α of T·α/(2σ²) + log(1/δ)/(α−1)."""
    if rounds <= 0:
        return 0.0
    rdp = rounds * ORDERS / (2 * noise_multiplier**2)
    return float(np.min(rdp + np.log(1 / delta) / (ORDERS - 1)))
