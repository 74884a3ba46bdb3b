"""The RNN of the book's chapter (model.arch gru / lstm), written so it quantizes fully to int8
and runs in TensorFlow Lite Micro.

`nn.GRU` / `nn.LSTM` do neither: litert-torch's quantizer has no LSTM rule and fails on GRU,
and their unrolled float graph ends in one CONCATENATION of T inputs where TFLite Micro allows
10. Here the cell is written out and unrolled over the steps: one FULLY_CONNECTED projects every
input frame at once, and each step is slices, FULLY_CONNECTED on the state, LOGISTIC, TANH, MUL,
ADD and SUB. Only the last state feeds the head, so nothing is concatenated. `model.stride`
groups steps into frames (fewer steps: a smaller model and arena).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from pipeline.models.architecture import Architecture

GATES = {"gru": 3, "lstm": 4}


def build(arch: Architecture) -> torch.nn.Module:
    """An unrolled GRU or LSTM over T // stride frames, its last state → dropout → linear."""
    import torch
    from torch import nn

    steps, channels = arch.input_shape
    frames, hidden, gates = steps // arch.stride, arch.hidden_size, GATES[arch.arch]

    class UnrolledRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.input_proj = nn.Linear(arch.stride * channels, gates * hidden)
            self.state_proj = nn.Linear(hidden, gates * hidden)
            self.dropout = nn.Dropout(arch.dropout)
            self.classifier = nn.Linear(hidden, arch.num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch = x.shape[0]
            x = x[:, : frames * arch.stride].reshape(batch, frames, arch.stride * channels)
            projected = self.input_proj(x)
            h = torch.zeros(batch, hidden, dtype=x.dtype)
            c = torch.zeros(batch, hidden, dtype=x.dtype)
            for t in range(frames):
                if arch.arch == "gru":
                    h = self.gru_step(projected[:, t], h)
                else:
                    h, c = self.lstm_step(projected[:, t], h, c)
            return self.classifier(self.dropout(h))

        def gru_step(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            s = self.state_proj(h)
            r = torch.sigmoid(g[:, :hidden] + s[:, :hidden])
            z = torch.sigmoid(g[:, hidden : 2 * hidden] + s[:, hidden : 2 * hidden])
            n = torch.tanh(g[:, 2 * hidden :] + r * s[:, 2 * hidden :])
            return n + z * (h - n)  # = (1 - z) n + z h, without a constant 1

        def lstm_step(
            self, g: torch.Tensor, h: torch.Tensor, c: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            s = g + self.state_proj(h)
            i = torch.sigmoid(s[:, :hidden])
            f = torch.sigmoid(s[:, hidden : 2 * hidden])
            cell = torch.tanh(s[:, 2 * hidden : 3 * hidden])
            o = torch.sigmoid(s[:, 3 * hidden :])
            c = f * c + i * cell
            return o * torch.tanh(c), c

    return UnrolledRNN()
