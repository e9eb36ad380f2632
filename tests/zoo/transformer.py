"""A two-layer pre-norm transformer encoder written op by op (no ``nn.MultiheadAttention``).

The input is float "soft token" features (N x seq_len x vocab), embedded by a MatMul with the
embedding matrix, so the ONNX input is float. The head projects back onto the vocabulary.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from tests.zoo.export import export_onnx, randomize_norms, seeded


class SelfAttention(nn.Module):
    """Multi-head self-attention: Q/K/V Linear, scaled MatMul, Softmax, output projection."""

    def __init__(self, d_model: int, n_heads: int, seq_len: int) -> None:
        super().__init__()
        self.shape = (seq_len, n_heads, d_model // n_heads)
        self.scale = 1.0 / math.sqrt(d_model // n_heads)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        context = torch.matmul(weights, v).transpose(1, 2)
        return self.out(context.reshape(-1, self.shape[0], self.shape[1] * self.shape[2]))


class EncoderLayer(nn.Module):
    """``x + attn(ln1(x))`` then ``x + fc2(gelu(fc1(ln2(x))))``."""

    def __init__(self, d_model: int, n_heads: int, seq_len: int, mlp_ratio: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, seq_len)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """N x ``seq_len`` x ``vocab`` float features -> N x ``seq_len`` x ``vocab`` logits.

    ``tie_weights``: the head uses the embedding matrix (vocab x d_model) as its weight, the
    same Parameter used twice. Both uses take it untransposed (MatMul for the embedding, Gemm
    with transB=1 for the head), so an exported copy of it is byte-identical to the original.
    """

    def __init__(
        self,
        vocab: int = 32,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        seq_len: int = 16,
        mlp_ratio: int = 2,
        *,
        tie_weights: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seq_len = seq_len
        with seeded(seed):
            self.embed = nn.Parameter(torch.randn(vocab, d_model) * 0.1)
            self.pos = nn.Parameter(torch.randn(seq_len, d_model) * 0.1)
            self.layers = nn.ModuleList(
                EncoderLayer(d_model, n_heads, seq_len, mlp_ratio) for _ in range(n_layers)
            )
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)
        if tie_weights:
            self.head.weight = self.embed
        randomize_norms(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vocab, d_model = self.embed.shape
        h = torch.matmul(x, self.embed) + self.pos
        for layer in self.layers:
            h = layer(h)
        h = self.ln_f(h).reshape(-1, d_model)
        return self.head(h).reshape(-1, self.seq_len, vocab)


def make_tiny_transformer_onnx(
    path: str | Path, seed: int = 0, *, tie_weights: bool = False
) -> Path:
    """Export a ``TinyTransformer`` (input "input" Nx16x32, output "logits" Nx16x32).

    With ``tie_weights`` the file holds the embedding matrix twice, as two byte-identical
    initializers (one read by the embedding MatMul, one by the head Gemm), the way exporters
    that untie shared parameters write it; without it no two weights are identical.
    """
    model = TinyTransformer(tie_weights=tie_weights, seed=seed)
    if tie_weights:
        model = copy.deepcopy(model)
        model.head.weight = nn.Parameter(model.embed.detach().clone())
    return export_onnx(
        model,
        (torch.zeros(1, model.seq_len, model.embed.shape[0]),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


class TiedLanguageModel(nn.Module):
    """Token ids -> logits with the two kinds of sharing exporters write out again: one block
    applied twice (ALBERT-style), and an output head tied to the embedding table."""

    def __init__(self, vocab: int = 500, width: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.block = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(ids)
        for _ in range(2):
            hidden = torch.relu(self.block(hidden))
        return self.head(hidden)


def make_tied_lm_onnx(path: str | Path, seed: int = 0) -> Path:
    """Export a ``TiedLanguageModel`` (input "ids" int64 Nx8, output "logits" Nx8x500)."""
    with seeded(seed):
        model = TiedLanguageModel()
    return export_onnx(
        model,
        (torch.zeros(1, 8, dtype=torch.long),),
        path,
        input_names=["ids"],
        output_names=["logits"],
        dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"}},
    )
