"""A tiny transformer encoder (model.arch transformer) that quantizes fully to int8 and runs in
TensorFlow Lite Micro.

- Frames of `stride` steps are embedded by a linear layer, plus a learned position embedding.
- Attention is written out (reshape, transpose, matmul, softmax, matmul) so it lowers to int8
  BATCH_MATMUL and SOFTMAX; `nn.MultiheadAttention` would not.
- The normalisation is LayerNorm written from mean, sub, mul and rsqrt: `nn.LayerNorm` stays a
  float island even with tinyops's quantizer.
- The feed-forward uses ReLU: TFLite Micro has no GELU kernel.
- One encoder block per entry of `model.channels` (that entry is its feed-forward width);
  `hidden_size` is the model width, `heads` the attention heads. The mean over frames feeds
  dropout and a linear head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture

EPSILON = 1e-5


class Norm(nn.Module):
    """LayerNorm written from mean, sub, mul and rsqrt, so it quantizes to int8."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=-1, keepdim=True)
        variance = (centred * centred).mean(dim=-1, keepdim=True)
        return centred * torch.rsqrt(variance + EPSILON) * self.weight + self.bias


class Block(nn.Module):
    """One encoder block: written-out attention, then a ReLU feed-forward, each normalised."""

    def __init__(self, width: int, ffn: int, heads: int, frames: int) -> None:
        super().__init__()
        self.width, self.heads, self.frames = width, heads, frames
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm1, self.norm2 = Norm(width), Norm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn), nn.ReLU(), nn.Linear(ffn, width))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        batch, width, head = x.shape[0], self.width, self.width // self.heads
        q, k, v = (
            t.reshape(batch, self.frames, self.heads, head).transpose(1, 2)
            for t in self.qkv(x).split(width, dim=-1)
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * (head**-0.5)
        mixed = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(mixed.transpose(1, 2).reshape(batch, self.frames, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.ffn(x))


class TinyTransformer(nn.Module):
    """Frames embedded plus a learned position, encoder blocks, a mean over frames, a head."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        steps, channels = arch.input_shape
        frames, width = steps // arch.stride, arch.hidden_size
        self.frames, self.stride, self.channels = frames, arch.stride, channels
        self.embed = nn.Linear(arch.stride * channels, width)
        self.position = nn.Parameter(torch.zeros(1, frames, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.Sequential(*(Block(width, f, arch.heads, frames) for f in arch.channels))
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(width, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames = x.shape[0], self.frames
        x = x[:, : frames * self.stride].reshape(batch, frames, self.stride * self.channels)
        x = self.blocks(self.embed(x) + self.position)
        return self.classifier(self.dropout(x.mean(dim=1)))


def build(arch: Architecture) -> nn.Module:
    """The encoder for `arch` (weights from the current torch RNG)."""
    return TinyTransformer(arch)
