"""The tensor-streaming probe: read intermediate tensors of a model on data, one batch at a time.

The model runs under ONNX Runtime on the caller's execution provider with the tensors exposed
as extra graph outputs (`only=True`: as its only outputs, the graph cut down to what they
need), so memory holds one batch of them at a time and shapes may vary between batches. Graph
inputs asked for are handed back from the feed. `stream` splits batches so that one run returns
at most `RUN_BYTES` of tensors: memory follows the largest activations of one sample, not the
data's batch size times every activation. Every engine that reads activations (quant's
calibration and bias correction, prune's moments and refit, share's input moments) goes
through `TensorProbe`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from onnxopt.data.feeds import feed_rows, feeds_up_to
from onnxopt.data.sources import Feed
from onnxopt.ir.edit import remove_dead_code
from onnxopt.runtime.session import make_session, session_options

RUN_BYTES = 128 * 2**20
"""Bytes of exposed tensors one streamed run may return. MobileNetV2's quant calibration exposes
~50 MB per 224x224 sample: in batches of 8 (two alive while the next one runs) its peak RSS was
1.5-1.65 GB with 256 or 1024 samples; a DBNet-style detector at 960x960 reached 5.1 GB."""


def expose_tensors(
    model: onnx.ModelProto,
    tensors: list[str],
    dtypes: Mapping[str, int] | None = None,
    *,
    only: bool = False,
) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (element type from `dtypes`, else
    float; any shape); with `only`, its outputs are exactly `tensors` and nodes nothing needs
    are dropped."""
    dtypes = dtypes or {}
    present = {o.name: o for o in model.graph.output}
    if only:
        exposed = copy.deepcopy(model)
        del exposed.graph.output[:]
        wanted = tensors
    else:
        exposed = onnx.ModelProto()
        exposed.CopyFrom(model)
        wanted = [name for name in tensors if name not in present]
    for name in wanted:
        if name in present and only:
            exposed.graph.output.append(copy.deepcopy(present[name]))
        else:
            dtype = dtypes.get(name, onnx.TensorProto.FLOAT)
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype, None))
    if only:
        remove_dead_code(exposed)
    return exposed


class TensorProbe:
    """Reads a fixed list of tensors of `model` for each feed, on `provider`."""

    def __init__(
        self,
        model: onnx.ModelProto,
        tensors: list[str],
        provider: str,
        *,
        dtypes: Mapping[str, int] | None = None,
        only: bool = False,
    ) -> None:
        inputs = {i.name for i in model.graph.input}
        self.tensors = list(tensors)
        self.computed = [t for t in self.tensors if t not in inputs]
        self.session = None
        self.inputs: set[str] = set()
        self.splittable = True
        # No tensor to compute: nothing to run (ORT refuses a graph without outputs).
        if self.computed:
            exposed = expose_tensors(model, self.computed, dtypes, only=only)
            options = session_options(spinning=False)
            self.session = make_session(exposed, provider, options=options)
            self.inputs = {i.name for i in self.session.get_inputs()}
            # A fixed batch dimension (an int, not a name) must be fed whole.
            self.splittable = all(
                i.shape and not isinstance(i.shape[0], int) for i in self.session.get_inputs()
            )

    def read(self, feed: Feed) -> dict[str, np.ndarray]:
        """The values of the tensors on `feed` (graph inputs: the feed's own arrays)."""
        values: dict[str, np.ndarray] = {}
        if self.session is not None:
            run_feed = {k: v for k, v in feed.items() if k in self.inputs}
            outputs = self.session.run(self.computed, run_feed)
            values = dict(zip(self.computed, outputs, strict=True))
        values.update({t: feed[t] for t in self.tensors if t not in values and t in feed})
        return values

    def stream(
        self, data: Iterable[Feed], max_samples: int | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(values, samples in the run) per run over the batches of `data`, up to the batch that
        reaches `max_samples`. A batch is split into runs of at most `RUN_BYTES` of values
        (sized from the first run, of one sample). The next run goes in a worker thread while the
        caller works on the current one (ONNX Runtime releases the GIL); at most two are alive."""
        runs = self._runs(feeds_up_to(data, max_samples))
        first = next(runs, None)
        if first is None:
            return
        values = self.read(first)
        rows = feed_rows(first)
        self._rows_per_run = max(1, RUN_BYTES * rows // max(_nbytes(values), 1))
        yield values, rows
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = None
            for feed in runs:
                running = (worker.submit(self.read, feed), feed_rows(feed))
                if pending is not None:
                    yield pending[0].result(), pending[1]
                pending = running
            if pending is not None:
                yield pending[0].result(), pending[1]

    def _runs(self, feeds: Iterable[Feed]) -> Iterator[Feed]:
        """The feeds cut along axis 0: one sample first, then `_rows_per_run` at a time."""
        self._rows_per_run = 1
        for feed in feeds:
            rows = feed_rows(feed)
            if not self._can_split(feed, rows):
                yield feed
                continue
            start = 0
            while start < rows:
                stop = min(rows, start + self._rows_per_run)
                yield {name: array[start:stop] for name, array in feed.items()}
                start = stop

    def _can_split(self, feed: Feed, rows: int) -> bool:
        return (
            self.splittable
            and rows > 1
            and all(array.ndim and array.shape[0] == rows for array in feed.values())
        )


def _nbytes(values: Mapping[str, np.ndarray]) -> int:
    return sum(int(np.asarray(value).nbytes) for value in values.values())


def stream_tensors(
    model: onnx.ModelProto,
    tensors: list[str],
    data: Iterable[Feed],
    *,
    provider: str,
    max_samples: int | None = None,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """`TensorProbe(model, tensors, provider).stream(data, max_samples)`."""
    return TensorProbe(model, tensors, provider).stream(data, max_samples)
