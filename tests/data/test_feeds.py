"""Taking the first samples of data: whole batches up to a count, or cut exactly at it."""

from __future__ import annotations

import numpy as np

from onnxopt.data.feeds import feed_rows, feeds_cut_at, feeds_up_to

FEEDS = [{"x": np.full((4, 2), i, np.float32)} for i in range(3)]


def test_feeds_up_to_keeps_whole_batches_and_feeds_cut_at_cuts_the_last():
    assert [feed_rows(f) for f in feeds_up_to(FEEDS, 6)] == [4, 4]
    assert [feed_rows(f) for f in feeds_up_to(FEEDS, None)] == [4, 4, 4]
    cut = list(feeds_cut_at(FEEDS, 6))
    assert [feed_rows(f) for f in cut] == [4, 2]
    assert cut[0] is FEEDS[0]  # a batch taken whole is not copied
    np.testing.assert_array_equal(cut[1]["x"], FEEDS[1]["x"][:2])
    assert [feed_rows(f) for f in feeds_cut_at(FEEDS, 8)] == [4, 4]
    assert [feed_rows(f) for f in feeds_cut_at(FEEDS, 100)] == [4, 4, 4]
