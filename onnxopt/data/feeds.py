"""What a model must be fed, and checks that a feed fits it.

A feed is `dict[input name, array]`. `check_feed` turns every mismatch (missing or unknown
name, dtype, rank, static dim, a symbolic dim bound to two values) into one InputError line
naming the input, what the model expects and what was given.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxopt.errors import InputError
from onnxopt.ir.shapes import Dim, declared_dim

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]

DEFAULT_DYNAMIC_BATCH = 8
FEED_BYTES = 8 * 2**20
"""Input bytes one dynamic batch holds at most (a larger sample is a batch of its own): ONNX
Runtime's working memory follows the input's size. A DBNet-style detector at 960x960 (11 MB a
sample) in batches of 8 held 2.4 GB per gate session; ImageNet crops (0.6 MB) keep batches of 8."""


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The inputs a caller must feed: graph inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            what = kind.removesuffix("_type").replace("_", " ") if kind else "value of no type"
            article = "an" if what[0] in "aeiou" else "a"
            raise InputError(
                f"input '{value.name}' is {article} {what}, not a tensor: onnxopt feeds, "
                "calibrates and validates models with tensor inputs only"
            )
        tensor_type = value.type.tensor_type
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        except KeyError:
            raise InputError(
                f"input '{value.name}' has no usable element type ({tensor_type.elem_type})"
            ) from None
        shape = tuple(declared_dim(d) for d in tensor_type.shape.dim)
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def check_feed(feed: Feed, specs: list[InputSpec], origin: str) -> None:
    """Raise one InputError line naming the input, what the model expects and what was given."""
    expected = {spec.name for spec in specs}
    inputs = ", ".join(sorted(expected))
    missing = expected - feed.keys()
    if missing:
        raise InputError(f"{origin}: missing input '{sorted(missing)[0]}' (model inputs: {inputs})")
    extra = feed.keys() - expected
    if extra:
        name = sorted(extra)[0]
        raise InputError(f"{origin}: '{name}' is not a model input (model inputs: {inputs})")
    bound: dict[str, tuple[int, str]] = {}
    for spec in specs:
        array = feed[spec.name]
        if not isinstance(array, np.ndarray):
            got = type(array).__name__
            raise InputError(f"{origin}: input '{spec.name}' must be a numpy array, got {got}")
        if array.dtype != spec.dtype:
            raise InputError(
                f"{origin}: input '{spec.name}' expects {spec.describe()}, got {array.dtype.name}"
            )
        if not _shape_matches(array.shape, spec.shape):
            raise InputError(
                f"{origin}: input '{spec.name}' expects {spec.describe()}, "
                f"got shape {list(array.shape)}"
            )
        _bind_symbols(spec, array.shape, bound, origin)


def _shape_matches(shape: tuple[int, ...], expected: tuple[Dim, ...]) -> bool:
    if len(shape) != len(expected):
        return False
    return all(not isinstance(e, int) or e == s for s, e in zip(shape, expected, strict=True))


def _bind_symbols(
    spec: InputSpec, shape: tuple[int, ...], bound: dict[str, tuple[int, str]], origin: str
) -> None:
    """A symbolic dim shared by several inputs must take one value within a feed."""
    for axis, (dim, size) in enumerate(zip(spec.shape, shape, strict=True)):
        if not isinstance(dim, str):
            continue
        if dim in bound and bound[dim][0] != size:
            value, other = bound[dim]
            raise InputError(
                f"{origin}: input '{spec.name}' dim {axis} ('{dim}') is {size}, "
                f"but input '{other}' has {dim}={value}"
            )
        bound.setdefault(dim, (size, spec.name))


def parse_shapes(texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse `name:1x3x224x224` items (as given to --shape) into {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, sep, dims = text.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(f"bad --shape '{text}' (expected NAME:DIMS, e.g. input:1x3x224x224)")
        shapes[name] = shape
    return shapes


def resolve_shape(spec: InputSpec, given: tuple[int, ...] | None, batch: int | None) -> tuple:
    """A concrete shape for `spec`: `given` (checked against it), else symbolic dims filled in.

    A dynamic first dim takes `batch` (default 1); other dynamic dims need `given`.
    """
    if given is not None:
        if not _shape_matches(given, spec.shape):
            shown = "x".join(map(str, given))
            raise InputError(f"--shape {spec.name}:{shown} does not fit input {spec.describe()}")
        return tuple(given)
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            if axis == 0 and batch is not None and dim != batch:
                raise InputError(
                    f"input '{spec.name}' has a static batch of {dim}; cannot run batch {batch}"
                )
            shape.append(dim)
        elif axis == 0:
            shape.append(batch or 1)
        else:
            raise InputError(
                f"input '{spec.name}' {spec.describe()} has dynamic dim {axis}; "
                f"give it with --shape {spec.name}:" + "x".join(["N"] * len(spec.shape))
            )
    return tuple(shape)


def static_batch(specs: list[InputSpec]) -> int | None:
    """The first static batch dim among the inputs, or None when every batch dim is dynamic."""
    for spec in specs:
        if spec.shape and isinstance(spec.shape[0], int):
            return spec.shape[0]
    return None


def batch_size_for(
    specs: list[InputSpec], requested: int | None, origin: str, sample_bytes: int = 0
) -> int:
    """The static batch, else the one requested, else 8 samples or fewer when a batch of 8
    would hold more than `FEED_BYTES` of input (`sample_bytes`: one sample's, when known)."""
    fixed = static_batch(specs)
    if fixed is not None and requested and requested != fixed:
        raise InputError(
            f"{origin}: the model has a static batch of {fixed}; cannot use {requested}"
        )
    if fixed or requested:
        return fixed or requested
    return max(1, min(DEFAULT_DYNAMIC_BATCH, FEED_BYTES // max(sample_bytes, 1)))


def batch_counts(samples: int, size: int, fixed: bool, origin: str) -> list[int]:
    """Rows per batch; with a static batch, a remainder that cannot fill one is dropped."""
    full, rest = divmod(samples, size)
    if fixed and full == 0:
        raise InputError(f"{origin}: holds {samples} samples, fewer than the static batch {size}")
    if fixed and rest:
        log.warning("%s: dropping the last %d samples (static batch %d)", origin, rest, size)
        rest = 0
    return [size] * full + ([rest] if rest else [])


class DataSource(ABC):
    """A re-iterable stream of feeds; iterating twice yields the same feeds."""

    description: str = ""
    synthetic: bool = False

    @abstractmethod
    def __iter__(self) -> Iterator[Feed]: ...


def feed_rows(feed: Feed) -> int:
    """Samples in a feed: the leading dimension of its first array (1 for a scalar)."""
    for array in feed.values():
        return int(array.shape[0]) if array.ndim else 1
    return 0


def feeds_up_to(data: Iterable[Feed], max_samples: int | None) -> Iterator[Feed]:
    """The batches of `data`, up to the one that reaches `max_samples` samples (all: None)."""
    samples = 0
    for feed in data:
        yield feed
        samples += feed_rows(feed)
        if max_samples is not None and samples >= max_samples:
            return


def feeds_cut_at(data: Iterable[Feed], samples: int) -> Iterator[Feed]:
    """The batches of `data` holding its first `samples` samples: the last one cut to fit
    (`feeds_up_to` keeps it whole), unless `data` is for a model of static batch, which
    cannot run a cut batch: there the last one stays whole."""
    fixed = static_batch(getattr(data, "specs", [])) is not None
    seen = 0
    for feed in data:
        if seen >= samples:
            return
        rows = feed_rows(feed)
        take = rows if fixed else min(rows, samples - seen)
        yield {k: v[:take] for k, v in feed.items()} if take < rows else feed
        seen += take


def take_rows(pending: list[Feed], count: int) -> tuple[Feed, list[Feed]]:
    """The first `count` rows of the pending chunks, and what is left of them."""
    names = list(pending[0])
    joined = {name: np.concatenate([chunk[name] for chunk in pending]) for name in names}
    batch = {name: np.ascontiguousarray(array[:count]) for name, array in joined.items()}
    rest = {name: array[count:] for name, array in joined.items()}
    return batch, ([rest] if feed_rows(rest) else [])


# --- Python objects ---------------------------------------------------------------------
