"""The manager's holdout: calibration samples that no pass sees, kept for measuring fidelity.

A pass that fits anything to its calibration data (least-squares refits, codebooks, rounding,
ranges) looks better on that data than on the next input. Without `--val`, the manager sets a
seeded random subset of the calibration samples aside before any pass runs; the gates, the
per-pass rows and the final fidelity are measured on it, and passes fit on the rest.

A split needs samples stacked on a common leading axis and enough of them: with fewer than
`2 * MIN_HOLDOUT` samples, or feeds without a sample axis (scalars, inputs of different
lengths), the data stay whole and every fidelity number is labelled in-sample.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from onnxopt.data.feeds import DEFAULT_DYNAMIC_BATCH, feed_rows, static_batch, take_rows
from onnxopt.data.sources import DataSource, Feed

log = logging.getLogger(__name__)

HOLDOUT_FRACTION = 0.2
"""Default share of the calibration samples held out."""
MIN_HOLDOUT = 32
"""Fewer held-out samples measure top-1 agreement too coarsely (one sample is 3 points)."""
MAX_HOLDOUT = 256
"""More held-out samples cost gate time (every gate runs two models over them) for little
precision: at 90 % agreement, 256 samples have a standard error under 2 points."""
CACHE_BYTES = 256 * 2**20
"""A holdout up to this size is kept in memory after its first read: the gates read it after
every pass, and an image folder would otherwise be decoded again each time."""


_COUNT_SUFFIX = re.compile(r" \(\d+ (samples|files|images)\)$")


@dataclass
class Split:
    """What passes fit on, what fidelity is measured on, and a sentence saying which is which."""

    fit: DataSource
    holdout: DataSource | None
    note: str

    @property
    def in_sample(self) -> bool:
        return self.holdout is None


def split_holdout(
    source: DataSource, *, fraction: float = HOLDOUT_FRACTION, seed: int = 0
) -> Split:
    """Set aside a seeded random `fraction` of `source`'s samples (clamped to
    [MIN_HOLDOUT, MAX_HOLDOUT]); the rest is what passes may fit on."""
    name = _COUNT_SUFFIX.sub("", source.description)  # "calib.npz (1024 samples)": counted here
    if fraction <= 0:
        return Split(source, None, f"in-sample: --holdout 0 keeps all of {name} for fitting")
    total, reason = count_samples(source)
    if reason:
        return Split(source, None, f"in-sample: {name} cannot be split by sample ({reason})")
    batch = batch_size_of(source)
    fixed = _fixed(source)
    wanted = min(max(round(fraction * total), MIN_HOLDOUT), MAX_HOLDOUT)
    if fixed:
        wanted -= wanted % batch
    if wanted < MIN_HOLDOUT or total - wanted < wanted:
        return Split(
            source,
            None,
            f"in-sample: {name} has {total} samples, too few to hold {MIN_HOLDOUT} out "
            f"(needs {2 * MIN_HOLDOUT}); fidelity is measured on samples the passes fitted on",
        )
    rng = np.random.default_rng([seed, total, 0x401D])
    chosen = np.zeros(total, dtype=bool)
    chosen[rng.choice(total, size=wanted, replace=False)] = True
    fit = RowSubset(source, np.flatnonzero(~chosen), batch, fixed, f"{name} but the holdout")
    holdout = RowSubset(
        source, np.flatnonzero(chosen), batch, fixed, f"holdout of {name}", cache=True
    )
    return Split(fit, holdout, f"holdout: {wanted} of {total} samples of {name}")


def row_range(source: DataSource, start: int, stop: int, description: str) -> RowSubset:
    """Samples `start` .. `stop - 1` of `source`, batched like it."""
    rows = np.arange(start, stop, dtype=np.int64)
    return RowSubset(source, rows, batch_size_of(source), _fixed(source), description)


def _fixed(source: DataSource) -> bool:
    return static_batch(getattr(source, "specs", [])) is not None


def split_unit(source: DataSource) -> int:
    """The row count every part of a split of `source` must be a multiple of: the model's
    static batch (a part of fewer rows is dropped by RowSubset, not run), else 1."""
    return static_batch(getattr(source, "specs", [])) or 1


def count_samples(source: DataSource) -> tuple[int, str]:
    """(samples, why the source cannot be split by sample or '')."""
    counts = getattr(source, "counts", None)
    if counts is not None:  # file readers know their batches without reading them
        return sum(counts), ""
    if isinstance(source, RowSubset):
        return source.samples, ""
    total = 0
    for index, feed in enumerate(source):
        leading = {array.shape[0] if array.ndim else None for array in feed.values()}
        if None in leading or len(leading) != 1:
            return 0, f"batch {index} has no common sample axis"
        total += feed_rows(feed)
    return total, ""


def batch_size_of(source: DataSource) -> int:
    size = getattr(source, "batch_size", None)
    if size:
        return int(size)
    for feed in source:
        return max(feed_rows(feed), 1)
    return DEFAULT_DYNAMIC_BATCH


class RowSubset(DataSource):
    """The samples of `source` at sorted positions `rows`, re-batched to `batch_size` rows.

    With a static batch a remainder that cannot fill one is dropped (the split makes the
    holdout a multiple of it). `cache=True` keeps the batches in memory after the first full
    read when they fit in CACHE_BYTES.
    """

    def __init__(
        self,
        source: DataSource,
        rows: np.ndarray,
        batch_size: int,
        fixed: bool,
        description: str,
        *,
        cache: bool = False,
    ) -> None:
        self.source = source
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = batch_size
        self.fixed = fixed
        self.samples = int(self.rows.size)
        self.description = f"{description} ({self.samples} samples)"
        self.synthetic = source.synthetic
        self.specs = getattr(source, "specs", [])
        self._cacheable = cache
        self._cached: list[Feed] | None = None

    def __iter__(self) -> Iterator[Feed]:
        if self._cached is not None:
            yield from self._cached
            return
        kept: list[Feed] | None = [] if self._cacheable else None
        for batch in self._select():
            if kept is not None:
                kept.append(batch)
                if _expected_bytes(kept, self.samples) > CACHE_BYTES:
                    kept = None  # holding it for the rest of this read would only cost memory
            yield batch
        self._cached = kept

    def _select(self) -> Iterator[Feed]:
        if not self.rows.size:
            return
        last = self.rows[-1]
        pending: list[Feed] = []
        held = offset = 0
        for feed in self.source:
            count = feed_rows(feed)
            lo, hi = np.searchsorted(self.rows, [offset, offset + count])
            offset += count
            if hi > lo:
                picked = self.rows[lo:hi] - (offset - count)
                pending.append({name: array[picked] for name, array in feed.items()})
                held += hi - lo
            while held >= self.batch_size:
                batch, pending = take_rows(pending, self.batch_size)
                held -= self.batch_size
                yield batch
            if offset > last:  # the rest of the source holds none of the rows
                break
        if held and not self.fixed:
            yield take_rows(pending, held)[0]


def _expected_bytes(batches: list[Feed], samples: int) -> float:
    """The bytes of `samples` samples, at the size per sample of `batches`."""
    rows = sum(feed_rows(batch) for batch in batches)
    held = sum(array.nbytes for batch in batches for array in batch.values())
    return held / max(rows, 1) * samples
