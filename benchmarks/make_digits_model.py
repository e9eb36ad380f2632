"""Train the bundled example model, a small residual CNN on scikit-learn's 8x8 digits.

Run from the repository root: ``python -m benchmarks.make_digits_model``. It writes
``examples/digits_cnn.onnx`` (input "input" Nx1x8x8 in [0, 1], output "logits" Nx10),
``examples/digits_calib.npz`` (128 training images) and ``examples/digits_val.npz`` (the
held-out 30 %: "input" and "label"), then prints the accuracy ONNX Runtime gets on the latter.
Training is seeded and runs on CPU in well under two minutes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnxopt.data.images import PREPROCESS_KEY
from tests.zoo import DigitsResNet, export_onnx

SEED = 0
EPOCHS = 60
BATCH = 64
CALIB_SIZE = 128


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits as float32 Nx1x8x8 in [0, 1] and int64 labels: stratified 70/30 split, seed 0."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.3, stratify=labels, random_state=SEED
    )
    return x_train, x_test, y_train, y_test


def _shift(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to one pixel in each direction (zero fill)."""
    padded = torch.nn.functional.pad(batch, (1, 1, 1, 1))
    offsets = torch.randint(0, 3, (batch.shape[0], 2), generator=gen)
    pairs = zip(padded, offsets.tolist(), strict=True)
    return torch.stack([p[:, i : i + 8, j : j + 8] for p, (i, j) in pairs])


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsResNet:
    """Train a ``DigitsResNet`` with AdamW, a cosine schedule and one-pixel shifts."""
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(SEED)
    model = DigitsResNet(seed=SEED)
    x, y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = EPOCHS * -(-len(x) // BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), BATCH):
            index = order[start : start + BATCH]
            loss = loss_fn(model(_shift(x[index], gen)), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def onnx_accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the ONNX model at ``path`` under ONNX Runtime (CPU)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": images})[0]
    return float(np.mean(logits.argmax(axis=1) == labels))


PREPROCESS = "resize=0,scale=0.00392156862745098,mean=0,std=1"
"""The model's input is the 8x8 grey image in [0, 1]: an 8-bit PNG of it, divided by 255."""


def declare_preprocess(path: Path) -> None:
    """Record in the model how an image file becomes its input, so `--calib images/` needs no
    `--preprocess` (`onnxopt.data.images.PREPROCESS_KEY`)."""
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = PREPROCESS_KEY, PREPROCESS
    onnx.save(model, str(path))


def write_images(images: np.ndarray, folder: Path) -> None:
    """Each (1, 8, 8) sample in [0, 1] as an 8-bit grey PNG, named by its index."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        pixels = np.round(image[0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:03d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples"), help="output folder")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_split()
    model = train(x_train, y_train)
    path = export_onnx(
        model,
        (torch.from_numpy(x_test[:1]),),
        out / "digits_cnn.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    declare_preprocess(path)
    calib = np.random.default_rng(SEED).permutation(len(x_train))[:CALIB_SIZE]
    np.savez(out / "digits_calib.npz", input=x_train[calib])
    write_images(x_train[calib], out / "digits_images")
    np.savez(out / "digits_val.npz", input=x_test, label=y_test)
    accuracy = onnx_accuracy(path, x_test, y_test)
    size_kb = path.stat().st_size / 1024
    print(f"{path}: {size_kb:.0f} KiB, onnxruntime test accuracy {accuracy:.4f} on {len(y_test)}")


if __name__ == "__main__":
    main()
