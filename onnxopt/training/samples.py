"""Distillation's data: the calibration samples in memory, split into training and
early-stopping rows, and the augmented batches the student trains on.

Augmentation makes new inputs from the ones at hand; the teacher labels each augmented batch
afresh, so no label is ever wrong. For every float input: mixup (half the samples of a batch
blended with another sample, keeping at least half their own content). For NCHW images
(4-D float, at most 4 channels): a random resized crop (35-100 % of the area, aspect 3:4 to
4:3, bilinear back to the input's size) and a horizontal flip, per sample. Integer inputs
(token ids, masks) are never changed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from onnxopt.data.feeds import DataSource, Feed, feed_rows
from onnxopt.errors import InputError

MIX_LOW = 0.5
CROP_AREA = (0.35, 1.0)
CROP_ASPECT = (3 / 4, 4 / 3)


@dataclass
class Samples:
    """Every input's samples stacked on axis 0."""

    arrays: dict[str, np.ndarray]

    @property
    def count(self) -> int:
        return feed_rows(self.arrays)

    def take(self, rows: np.ndarray) -> Feed:
        return {name: np.ascontiguousarray(a[rows]) for name, a in self.arrays.items()}

    def batches(self, size: int) -> Iterator[Feed]:
        for start in range(0, self.count, size):
            yield self.take(np.arange(start, min(start + size, self.count)))


class SamplesSource(DataSource):
    """`Samples` as a DataSource of fixed batches (for the fidelity scorer)."""

    def __init__(self, samples: Samples, batch: int, description: str) -> None:
        self.samples, self.batch, self.description = samples, batch, description

    def __iter__(self) -> Iterator[Feed]:
        return self.samples.batches(self.batch)


def load_samples(data: DataSource) -> Samples:
    """All samples of `data` in memory; every input needs a sample axis."""
    chunks: dict[str, list[np.ndarray]] = {}
    for feed in data:
        for name, array in feed.items():
            if array.ndim == 0:
                raise InputError(f"distill needs samples stacked on axis 0; input '{name}' "
                                 "is a scalar")
            chunks.setdefault(name, []).append(array)
    if not chunks:
        raise InputError("distill: the calibration data holds no samples")
    arrays = {name: np.concatenate(parts) for name, parts in chunks.items()}
    counts = {a.shape[0] for a in arrays.values()}
    if len(counts) != 1:
        raise InputError(f"distill: inputs have different sample counts {sorted(counts)}")
    return Samples(arrays)


def split_early_stop(samples: Samples, share: float, seed: int,
                     multiple: int = 1) -> tuple[Samples, Samples]:
    """(training rows, early-stopping rows), a seeded random split; the early-stopping rows a
    multiple of `multiple` (a static batch), at least one batch, leaving one to train on."""
    count = samples.count
    held = min(count - multiple, max(multiple, round(count * share)))
    held -= held % multiple
    order = np.random.default_rng([seed, 0xD157]).permutation(count)
    return Samples(samples.take(np.sort(order[held:]))), Samples(samples.take(np.sort(
        order[:held])))


def is_image(array: np.ndarray) -> bool:
    return array.ndim == 4 and array.dtype.kind == "f" and array.shape[1] <= 4


def augment(feed: Feed, generator: torch.Generator) -> Feed:
    """A new batch made from `feed` (see the module docstring)."""
    rows = feed_rows(feed)
    mix = torch.rand(rows, generator=generator) < 0.5
    share = MIX_LOW + (1 - MIX_LOW) * torch.rand(rows, generator=generator)
    partner = torch.randperm(rows, generator=generator)
    out = {}
    for name, array in feed.items():
        if array.dtype.kind != "f":
            out[name] = array
            continue
        value = torch.from_numpy(array)
        if is_image(array):
            value = _crop_and_flip(value, generator)
        if rows > 1:
            weight = torch.where(mix, share, torch.ones(rows)).to(value.dtype)
            weight = weight.reshape((rows,) + (1,) * (value.ndim - 1))
            value = weight * value + (1 - weight) * value[partner]
        out[name] = np.ascontiguousarray(value.numpy())
    return out


def _crop_and_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    height, width = images.shape[2:]
    out = torch.empty_like(images)
    for row in range(images.shape[0]):
        top, left, h, w = _crop_box(height, width, generator)
        crop = images[row : row + 1, :, top : top + h, left : left + w]
        if (h, w) != (height, width):
            crop = F.interpolate(crop, size=(height, width), mode="bilinear",
                                 align_corners=False)
        if torch.rand((), generator=generator) < 0.5:
            crop = crop.flip(-1)
        out[row] = crop[0]
    return out


def _crop_box(height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    area = height * width * _uniform(*CROP_AREA, generator)
    aspect = math.exp(_uniform(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]), generator))
    w = min(width, max(1, round(math.sqrt(area * aspect))))
    h = min(height, max(1, round(math.sqrt(area / aspect))))
    top = int(torch.randint(0, height - h + 1, (), generator=generator))
    left = int(torch.randint(0, width - w + 1, (), generator=generator))
    return top, left, h, w


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))
