"""Calibration and validation data: readers that stream feeds (`dict[input name, array]`).

Sources, opened by `open_data`:
- `FILE.npz` whose keys are the model's input names, samples stacked on axis 0 (a `.npy` file
  works the same way for a single-input model). Read one batch at a time, never whole. A file
  that cannot be stacked (a scalar, different leading dims) but fits the inputs exactly is one
  sample (`onnxopt.data.npz`).
- a directory of `.npz`/`.npy` files, one sample each (with or without the batch axis), sorted by
  path and stacked into batches; `.npy` only for single-input models. A file holding one whole
  feed whose inputs share no sample axis (scalars, different first dims) is one batch as is.
- a directory of images (jpg/png/bmp/webp) preprocessed as declared by `ImagePreprocess`.
- a Python iterable of feeds (or a function returning one), or an object with ORT's
  `CalibrationDataReader.get_next()`.
- `random`, only when asked for: fidelity numbers on random data mean nothing.

Batches: a static batch dim is used as is (leftover samples are dropped with a warning); a
dynamic one gets `batch_size` (default 8). Every feed is checked against the model's inputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxopt.data.feeds import (
    DEFAULT_DYNAMIC_BATCH,
    DataSource,
    Feed,
    InputSpec,
    batch_size_for,
    check_feed,
    feed_rows,
    input_specs,
    parse_shapes,
    resolve_shape,
    static_batch,
    take_rows,
)
from onnxopt.data.images import (
    IMAGE_SUFFIXES,
    ImageFolderSource,
    ImagePreprocess,
    declared_preprocess,
    parse_preprocess,
)
from onnxopt.data.npz import NpzSource, OneSampleSource, npy_needs_one_input, open_array_file
from onnxopt.errors import InputError
from onnxopt.ir.limits import memory_budget
from onnxopt.units import human_bytes

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DYNAMIC_BATCH",
    "DataSource",
    "DirectorySource",
    "Feed",
    "ImageFolderSource",
    "ImagePreprocess",
    "InputSpec",
    "IterableSource",
    "NpzSource",
    "OneSampleSource",
    "RandomSource",
    "check_feed",
    "input_specs",
    "open_data",
    "parse_preprocess",
    "parse_shapes",
    "resolve_shape",
]

RANDOM_BATCHES = 4
ARRAY_SUFFIXES = (".npz", ".npy")


# --- a directory of per-sample files -----------------------------------------------------


class DirectorySource(DataSource):
    """One sample per `.npz`/`.npy` file (batch axis optional), sorted by path, stacked."""

    def __init__(self, path: Path, specs: list[InputSpec], batch_size: int | None = None) -> None:
        self.path = Path(path)
        self.specs = specs
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in ARRAY_SUFFIXES)
        if not self.files:
            raise InputError(f"{self.path}: no .npz or .npy files")
        if len(specs) != 1 and any(p.suffix.lower() == ".npy" for p in self.files):
            npy = next(p for p in self.files if p.suffix.lower() == ".npy")
            raise InputError(npy_needs_one_input(npy, specs))
        self.batch_size = batch_size_for(specs, batch_size, str(self.path))
        self.fixed = static_batch(specs) is not None
        self.loose = [InputSpec(s.name, s.dtype, (None, *s.shape[1:])) for s in specs]
        self.description = f"{self.path.name}/ ({len(self.files)} files)"

    def __iter__(self) -> Iterator[Feed]:
        pending: list[Feed] = []
        rows = 0
        for file in self.files:
            chunk, whole = self._read(file)
            if whole:
                yield chunk
                continue
            pending.append(chunk)
            rows += feed_rows(chunk)
            while rows >= self.batch_size:
                batch, pending = take_rows(pending, self.batch_size)
                rows -= self.batch_size
                check_feed(batch, self.specs, f"{self.path} (near {file.name})")
                yield batch
        if rows and self.fixed:
            log.warning(
                "%s: dropping the last %d samples (static batch %d)",
                self.path,
                rows,
                self.batch_size,
            )
        elif rows:
            batch, _ = take_rows(pending, rows)
            check_feed(batch, self.specs, str(self.path))
            yield batch

    def _read(self, file: Path) -> tuple[Feed, bool]:
        """The file's arrays, and whether they are a whole feed that cannot be stacked."""
        try:
            if file.suffix.lower() == ".npy":
                raw = {self.specs[0].name: np.load(file, allow_pickle=False)}
            else:
                with np.load(file, allow_pickle=False) as archive:
                    raw = {s.name: archive[s.name] for s in self.specs if s.name in archive.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read data file {file}: {exc}") from None
        for spec in self.specs:
            if spec.name not in raw:
                has = ", ".join(raw) or "nothing"
                raise InputError(f"{file}: missing input '{spec.name}' (file has: {has})")
        if _whole_feed(raw, self.specs):
            return {spec.name: raw[spec.name] for spec in self.specs}, True
        chunk = {}
        for spec in self.specs:
            array = raw[spec.name]
            if array.ndim == len(spec.shape) - 1:
                array = array[np.newaxis]
            chunk[spec.name] = array
        check_feed(chunk, self.loose, str(file))
        if len({feed_rows({k: v}) for k, v in chunk.items()}) > 1:
            raise InputError(f"{file}: inputs hold different numbers of samples")
        return chunk, False


def _whole_feed(raw: Feed, specs: list[InputSpec]) -> bool:
    """Whether `raw` fits the inputs exactly but has no common sample axis to stack on."""
    arrays = [raw[spec.name] for spec in specs]
    leading = {a.shape[0] if a.ndim else None for a in arrays}
    if len(leading) == 1 and None not in leading:
        return False
    try:
        check_feed({spec.name: raw[spec.name] for spec in specs}, specs, "")
    except InputError:
        return False
    return True


class IterableSource(DataSource):
    """Feeds from Python: a list/iterable of dicts, a function returning one, a single dict, or
    an ORT `CalibrationDataReader` (`get_next()` until None; `rewind()` used when re-read).

    A one-shot iterator or a reader without `rewind()` can be iterated only once.
    """

    def __init__(self, items: Any, specs: list[InputSpec]) -> None:
        self.items = items
        self.specs = specs
        self._started = False
        self.description = f"Python {type(items).__name__}"

    def __iter__(self) -> Iterator[Feed]:
        for index, feed in enumerate(self._raw()):
            if not isinstance(feed, Mapping):
                got = type(feed).__name__
                raise InputError(
                    f"data item {index}: expected a dict of input name -> array, got {got}"
                )
            feed = dict(feed)
            check_feed(feed, self.specs, f"data item {index}")
            yield feed

    def _raw(self) -> Iterator[Any]:
        source = self.items
        again = self._started
        self._started = True
        if isinstance(source, Mapping):
            yield source
        elif hasattr(source, "get_next"):
            if again:
                if not hasattr(source, "rewind"):
                    raise InputError(
                        "the data reader was already read and has no rewind(); "
                        "pass a list of feeds or a reader with rewind()"
                    )
                source.rewind()
            while (feed := source.get_next()) is not None:
                yield feed
        elif isinstance(source, Iterator):
            if again:
                raise InputError(
                    "the data iterator was already consumed; pass a list of feeds "
                    "or a function that returns a fresh iterable"
                )
            yield from source
        elif callable(source):
            yield from source()
        elif isinstance(source, Iterable):
            yield from source
        else:
            raise InputError(f"cannot read data from a {type(source).__name__}")


# --- random -------------------------------------------------------------------------------


class RandomSource(DataSource):
    """Seeded random feeds from the input specs.

    Shapes come from `shapes[input]` when given; otherwise a dynamic first dim is `batch`
    (default 1) and other dynamic dims take `dim_values[symbol]` or 1.
    """

    synthetic = True

    def __init__(
        self,
        specs: list[InputSpec],
        *,
        seed: int = 0,
        batches: int = RANDOM_BATCHES,
        dim_values: dict[str, int] | None = None,
        shapes: dict[str, tuple[int, ...]] | None = None,
        batch: int | None = None,
    ) -> None:
        self.specs = specs
        self.seed = seed
        self.batches = batches
        self.dim_values = dim_values or {}
        given = shapes or {}
        self.shapes = {
            s.name: resolve_shape(s, given[s.name], None) for s in specs if s.name in given
        }
        self.batch = batch
        self.description = f"random ({batches} batches, seed {seed})"

    def __iter__(self) -> Iterator[Feed]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.batches):
            yield {spec.name: random_array(spec, self.shape_of(spec), rng) for spec in self.specs}

    def shape_of(self, spec: InputSpec) -> tuple[int, ...]:
        if spec.name in self.shapes:
            return self.shapes[spec.name]
        return tuple(
            d
            if isinstance(d, int)
            else (self.batch or 1)
            if axis == 0 and self.batch
            else self.dim_values.get(str(d), 1)
            for axis, d in enumerate(spec.shape)
        )


def random_array(spec: InputSpec, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Standard-normal floats, 0/1 for integers and booleans (safe as indices and masks)."""
    needed = math.prod(shape) * 8  # drawn as float64/int64, then cast
    budget = memory_budget()
    if needed > budget:
        raise InputError(
            f"random data for input '{spec.name}' of shape {list(shape)} needs "
            f"{human_bytes(needed)}, more than the {human_bytes(budget)} of memory available"
        )
    if spec.dtype.kind == "f":
        return rng.standard_normal(shape).astype(spec.dtype)
    if spec.dtype.kind in "biu":
        return rng.integers(0, 2, shape).astype(spec.dtype)
    raise InputError(f"cannot generate random data for input '{spec.name}' of type {spec.dtype}")


# --- choosing a source --------------------------------------------------------------------


def open_data(
    spec: str | Path | DataSource | Iterable[Feed] | None,
    model: onnx.ModelProto,
    *,
    batch_size: int | None = None,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
    preprocess: ImagePreprocess | None = None,
) -> DataSource | None:
    """Open the data named by the user for `model`; None stays None, a DataSource is kept.

    `spec`: 'random', a .npz/.npy file, a directory of .npz/.npy files or of images, or a
    Python iterable of feeds / CalibrationDataReader. `shapes` fixes dynamic dims of random data;
    `preprocess` declares how images become tensors (default: what the model declares in its
    metadata, `images.PREPROCESS_KEY`, else ImageNet's).
    """
    if spec is None or isinstance(spec, DataSource):
        return spec
    specs = input_specs(model)
    if not isinstance(spec, (str, Path)):
        return IterableSource(spec, specs)
    if str(spec) == "random":
        log.warning("using random inputs: fidelity numbers computed on them are meaningless")
        return RandomSource(specs, seed=seed, shapes=shapes, batch=batch_size)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"data not found: {path} (expected a .npz/.npy file, folder or 'random')")
    if path.is_dir():
        preprocess = preprocess or declared_preprocess(model)
        return _open_directory(path, specs, batch_size, preprocess)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return open_array_file(path, specs, batch_size)
    raise InputError(f"unsupported data file {path} (expected .npz, .npy, a folder or 'random')")


def _open_directory(
    path: Path, specs: list[InputSpec], batch_size: int | None, preprocess: ImagePreprocess | None
) -> DataSource:
    suffixes = {p.suffix.lower() for p in path.rglob("*") if p.is_file()}
    arrays = suffixes & set(ARRAY_SUFFIXES)
    images = suffixes & set(IMAGE_SUFFIXES)
    if arrays and images:
        raise InputError(f"{path}: holds both array files and images; keep one kind per folder")
    if images:
        return ImageFolderSource(path, specs, batch_size, preprocess or ImagePreprocess())
    if arrays:
        return DirectorySource(path, specs, batch_size)
    kinds = ", ".join((*ARRAY_SUFFIXES, *IMAGE_SUFFIXES))
    raise InputError(f"{path}: no data files ({kinds})")
