"""A small BERT-shaped sentence encoder: token ids and a padding mask in, token states out.

Post-norm layers as BERT writes them (``ln(x + attn(x))``, ``ln(x + fc2(gelu(fc1(x))))``),
exact GELU, an additive -10000 bias on padded keys, embeddings by Gather. Random weights with
non-trivial LayerNorm parameters and a few large embedding channels, the outlier channels of
the residual stream that real encoders carry.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from tests.zoo.export import export_onnx, randomize_norms, seeded


class BertLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(width // heads)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        return x.reshape(n, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        x = self.ln1(x + self.o(context.reshape(x.shape)))
        return self.ln2(x + self.fc2(nn.functional.gelu(self.fc1(x))))


class TinyBert(nn.Module):
    def __init__(self, vocab: int = 200, width: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(64, width)
        self.ln = nn.LayerNorm(width)
        self.layers = nn.ModuleList(BertLayer(width, heads) for _ in range(layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.ln(self.words(ids) + self.positions(positions))
        bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x


def make_tiny_bert_onnx(path: str | Path, seed: int = 0) -> Path:
    """Export a ``TinyBert`` (inputs "input_ids", "attention_mask" int64 N x L; output
    "token_states" N x L x 64)."""
    with seeded(seed):
        model = TinyBert()
    randomize_norms(model, seed)
    with torch.no_grad():
        model.ln.bias[:3] += torch.tensor([4.0, -3.0, 5.0])  # outlier channels
    ids = torch.ones(2, 12, dtype=torch.int64)
    axes = {0: "n", 1: "length"}
    return export_onnx(
        model,
        (ids, torch.ones_like(ids)),
        path,
        input_names=["input_ids", "attention_mask"],
        output_names=["token_states"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_states": axes},
    )
