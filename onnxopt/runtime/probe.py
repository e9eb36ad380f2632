"""The tensor-streaming probe: read intermediate tensors of a model on data, one batch at a time.

The model runs under ONNX Runtime on the caller's execution provider with the tensors exposed
as extra graph outputs (`only=True`: as its only outputs, the graph cut down to what they
need), so memory holds one batch of them at a time and shapes may vary between batches. Graph
inputs asked for are handed back from the feed. Every engine that reads activations (quant's
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
        # No tensor to compute: nothing to run (ORT refuses a graph without outputs).
        if self.computed:
            exposed = expose_tensors(model, self.computed, dtypes, only=only)
            options = session_options(spinning=False)
            self.session = make_session(exposed, provider, options=options)
            self.inputs = {i.name for i in self.session.get_inputs()}

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
        """(values, samples in the batch) per batch of `data`, up to the batch that reaches
        `max_samples`. The next batch runs in a worker thread while the caller works on the
        current one (ONNX Runtime releases the GIL); at most two batches are alive at once."""
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = None
            for feed in feeds_up_to(data, max_samples):
                running = (worker.submit(self.read, feed), feed_rows(feed))
                if pending is not None:
                    yield pending[0].result(), pending[1]
                pending = running
            if pending is not None:
                yield pending[0].result(), pending[1]


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
