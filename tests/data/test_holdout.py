"""The manager's holdout split: disjoint, seeded, batched like its source, or declined."""

from __future__ import annotations

import numpy as np
import pytest

from onnxopt.data import holdout as holdout_module
from onnxopt.data.feeds import InputSpec
from onnxopt.data.holdout import MAX_HOLDOUT, MIN_HOLDOUT, RowSubset, row_range, split_holdout
from onnxopt.data.sources import IterableSource, NpzSource


def _source(tmp_path, samples: int, batch: int | None = None) -> NpzSource:
    x = np.arange(samples, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x)
    return NpzSource(path, [InputSpec("x", np.dtype(np.float32), (batch or "n", 3))])


def _rows(source) -> list[int]:
    return [int(v) for feed in source for v in feed["x"][:, 0]]


def test_split_is_disjoint_complete_and_batched(tmp_path):
    split = split_holdout(_source(tmp_path, 1000), fraction=0.2, seed=1)
    held, fit = _rows(split.holdout), _rows(split.fit)
    assert len(held) == 200 and len(fit) == 800
    assert sorted(held + fit) == list(range(1000))
    assert held != list(range(200))  # random, not the first samples: files are often sorted
    assert {len(f["x"]) for f in split.fit} == {8}  # NpzSource's batch size
    assert split.note == "holdout: 200 of 1000 samples of d.npz"
    assert split.holdout.description == "holdout of d.npz (200 samples)"


def test_holdout_size_is_clamped(tmp_path):
    assert split_holdout(_source(tmp_path, 100), fraction=0.1).holdout.samples == MIN_HOLDOUT
    big = split_holdout(_source(tmp_path, 5000), fraction=0.5)
    assert big.holdout.samples == MAX_HOLDOUT


def test_static_batch_holdout_is_a_whole_number_of_batches(tmp_path):
    split = split_holdout(_source(tmp_path, 300, batch=7), fraction=0.2)
    assert split.holdout.samples == 56  # 60 rounded down to batches of 7
    assert all(len(feed["x"]) == 7 for feed in split.holdout)
    assert all(len(feed["x"]) == 7 for feed in split.fit)  # the remainder is dropped


def test_unsplittable_feeds_stay_whole_and_say_why():
    specs = [InputSpec("a", np.dtype(np.float32), (4,)), InputSpec("s", np.dtype(np.int64), ())]
    feeds = [{"a": np.zeros(4, np.float32), "s": np.array(3)}] * 80
    split = split_holdout(IterableSource(feeds, specs))
    assert split.in_sample and "cannot be split by sample" in split.note


def test_holdout_is_cached_after_one_full_read(tmp_path):
    source = _source(tmp_path, 200)
    reads = []

    class Counting(type(source)):
        def __iter__(self):
            reads.append(1)
            yield from super().__iter__()

    source.__class__ = Counting
    holdout = split_holdout(source).holdout
    first, second = _rows(holdout), _rows(holdout)
    assert first == second and len(reads) == 1


def test_a_holdout_too_large_to_cache_is_read_again_and_never_held(tmp_path, monkeypatch):
    source = _source(tmp_path, 200)
    holdout = split_holdout(source).holdout
    one_batch = sum(a.nbytes for a in next(iter(holdout)).values())
    monkeypatch.setattr(holdout_module, "CACHE_BYTES", 2 * one_batch)  # under the 40 samples
    first, second = _rows(holdout), _rows(holdout)
    assert first == second and holdout._cached is None


@pytest.mark.parametrize(("start", "stop"), [(0, 10), (5, 23), (190, 200)])
def test_row_range_reads_a_contiguous_slice(tmp_path, start, stop):
    subset = row_range(_source(tmp_path, 200), start, stop, "slice")
    assert isinstance(subset, RowSubset)
    assert _rows(subset) == list(range(start, stop))
