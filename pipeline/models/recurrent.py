"""The RNN of the book's chapter (model.arch gru / lstm), written so it quantizes fully to int8
and runs in TensorFlow Lite Micro.

`nn.GRU` / `nn.LSTM` do neither: litert-torch's quantizer has no LSTM rule and fails on GRU,
and their unrolled float graph ends in one CONCATENATION of T inputs where TFLite Micro allows
10. Here the cell is written out and unrolled over the steps: one FULLY_CONNECTED projects every
input frame at once, and each step is slices, FULLY_CONNECTED on the state, LOGISTIC, TANH, MUL,
ADD and SUB. Only the last state feeds the head, so nothing is concatenated. `model.stride`
groups steps into frames (fewer steps: a smaller model and arena).

Unrolling copies the cell's ops (and litert-torch its weights) once per frame, so size and arena
grow with T. `step_module` is the streaming form firmware wants: one frame and the state in, the
logits and the new state out, called once per frame with the same weights (any T, a small arena).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.models.spec import Architecture

GATES = {"gru": 3, "lstm": 4}


class UnrolledRNN(nn.Module):
    """A GRU or LSTM cell unrolled over T // stride frames; its last state → dropout → linear."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        steps, channels = arch.input_shape
        self.kind, self.hidden, self.stride = arch.arch, arch.hidden_size, arch.stride
        self.frames, self.channels = steps // arch.stride, channels
        self.states = 1 if arch.arch == "gru" else 2  # the state: h, or h and c
        gates = GATES[arch.arch]
        self.input_proj = nn.Linear(arch.stride * channels, gates * self.hidden)
        self.state_proj = nn.Linear(self.hidden, gates * self.hidden)
        self.dropout = nn.Dropout(arch.dropout)
        self.classifier = nn.Linear(self.hidden, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames = x.shape[0], self.frames
        x = x[:, : frames * self.stride].reshape(batch, frames, self.stride * self.channels)
        projected = self.input_proj(x)
        state = tuple(torch.zeros(batch, self.hidden, dtype=x.dtype) for _ in range(self.states))
        for t in range(frames):
            state = self.step(projected[:, t], *state)
        return self.classifier(self.dropout(state[0]))

    def step(self, g: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One frame's projection and the state → the new state (h first)."""
        if self.kind == "gru":
            return (self.gru_step(g, state[0]),)
        return self.lstm_step(g, *state)

    def gru_step(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        hidden, s = self.hidden, self.state_proj(h)
        r = torch.sigmoid(g[:, :hidden] + s[:, :hidden])
        z = torch.sigmoid(g[:, hidden : 2 * hidden] + s[:, hidden : 2 * hidden])
        n = torch.tanh(g[:, 2 * hidden :] + r * s[:, 2 * hidden :])
        return n + z * (h - n)  # = (1 - z) n + z h, without a constant 1

    def lstm_step(
        self, g: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, s = self.hidden, g + self.state_proj(h)
        i = torch.sigmoid(s[:, :hidden])
        f = torch.sigmoid(s[:, hidden : 2 * hidden])
        cell = torch.tanh(s[:, 2 * hidden : 3 * hidden])
        o = torch.sigmoid(s[:, 3 * hidden :])
        c = f * c + i * cell
        return o * torch.tanh(c), c


class StreamingStep(nn.Module):
    """The streaming cell of an unrolled RNN, sharing its weights: (frame, *state) →
    (logits, *new state)."""

    def __init__(self, rnn: UnrolledRNN) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, frame: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new = self.rnn.step(self.rnn.input_proj(frame), *state)
        return (self.rnn.classifier(new[0]), *new)


def build(arch: Architecture) -> nn.Module:
    """An unrolled GRU or LSTM for `arch` (weights from the current torch RNG)."""
    return UnrolledRNN(arch)


def step_module(model: nn.Module) -> nn.Module:
    """The streaming step of `model`: frame of shape (1, stride × C), each state
    (1, hidden_size)."""
    assert isinstance(model, UnrolledRNN), type(model)
    return StreamingStep(model).eval()
