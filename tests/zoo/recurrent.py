"""LSTM and GRU sequence classifiers exported by torch (ONNX LSTM/GRU ops, dynamic batch and
sequence length)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.zoo.export import export_onnx, seeded


class RecurrentClassifier(nn.Module):
    """x [batch, seq, features] -> Linear -> LSTM or GRU -> Linear on the last step's state."""

    def __init__(self, cell: str = "lstm", features: int = 8, hidden: int = 32, *, seed: int = 0):
        super().__init__()
        with seeded(seed):
            self.embed = nn.Linear(features, hidden)
            kind = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
            self.rnn = kind(hidden, hidden, batch_first=True)
            self.head = nn.Linear(hidden, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.rnn(torch.relu(self.embed(x)))
        return self.head(sequence[:, -1])


def make_recurrent_onnx(path: str | Path, cell: str = "lstm", seed: int = 0) -> Path:
    """Export a ``RecurrentClassifier`` (input "x" [batch, seq, 8], output "logits" [batch, 5])."""
    return export_onnx(
        RecurrentClassifier(cell, seed=seed),
        (torch.zeros(2, 6, 8),),
        path,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch", 1: "seq"}, "logits": {0: "batch"}},
    )
