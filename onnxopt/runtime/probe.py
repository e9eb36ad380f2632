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
import itertools
import logging
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from onnxopt.data.feeds import feed_rows, feeds_up_to
from onnxopt.data.sources import Feed
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.shapes import infer_shapes_at
from onnxopt.runtime.session import RELEASE, make_session, session_options

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class _Group:
    """What one run reads: its session and run options, the tensors it computes, and those it
    hands back (computed ones and graph inputs taken from the feed)."""

    session: ort.InferenceSession | None
    run_options: ort.RunOptions | None
    computed: list[str]
    wanted: list[str]


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
        self.model, self.provider, self.dtypes = model, provider, dtypes
        self.tensors = list(tensors)
        self.computed = [t for t in self.tensors if t not in inputs]
        self.session = None
        self.inputs: set[str] = set()
        self.splittable = True
        # No tensor to compute: nothing to run (ORT refuses a graph without outputs).
        if self.computed:
            self.session = self._session(self.computed, only)
            self.inputs = {i.name for i in self.session.get_inputs()}
            # A fixed batch dimension (an int, not a name) must be fed whole.
            self.splittable = all(
                i.shape and not isinstance(i.shape[0], int) for i in self.session.get_inputs()
            )

    def _session(self, tensors: list[str], only: bool, arena: bool = True):
        exposed = expose_tensors(self.model, tensors, self.dtypes, only=only)
        options = session_options(spinning=False)
        options.enable_cpu_mem_arena = arena
        return make_session(exposed, self.provider, options=options)

    def read(self, feed: Feed) -> dict[str, np.ndarray]:
        """The values of the tensors on `feed` (graph inputs: the feed's own arrays)."""
        return self._read(feed, self._whole())

    def _whole(self) -> _Group:
        return _Group(self.session, RELEASE, self.computed, self.tensors)

    def _read(self, feed: Feed, group: _Group) -> dict[str, np.ndarray]:
        values: dict[str, np.ndarray] = {}
        if group.session is not None:
            run_feed = {k: v for k, v in feed.items() if k in self.inputs}
            outputs = group.session.run(group.computed, run_feed, group.run_options)
            values = dict(zip(group.computed, outputs, strict=True))
        values.update({t: feed[t] for t in group.wanted if t not in values and t in feed})
        return values

    def stream(
        self, data: Iterable[Feed], max_samples: int | None = None
    ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
        """(values, samples) per run over the batches of `data`, up to the batch that reaches
        `max_samples`. A run returns at most `RUN_BYTES` of values (sizes inferred at the first
        batch's shapes): a batch is split along axis 0, and when one sample's tensors take more,
        they are read in groups, one run per group, each run's values holding only its group's
        tensors; the samples are counted on the group read last (0 on the others). The next run
        goes in a worker thread while the caller works on the current one (ONNX Runtime releases
        the GIL); at most two are alive."""
        feeds = iter(feeds_up_to(data, max_samples))
        first = next(feeds, None)
        if first is None:
            return
        rows_per_run, groups = self._plan(first)
        jobs = (
            (feed, group, feed_rows(feed) if last else 0)
            for whole in itertools.chain([first], feeds)
            for feed in self._split(whole, rows_per_run)
            for last, group in zip_last(groups)
        )
        with ThreadPoolExecutor(max_workers=1) as worker:
            pending = None
            for feed, group, rows in jobs:
                running = (worker.submit(self._read, feed, group), rows)
                if pending is not None:
                    yield pending[0].result(), pending[1]
                pending = running
            if pending is not None:
                yield pending[0].result(), pending[1]

    def _plan(self, feed: Feed) -> tuple[int, list[_Group]]:
        """Rows per run and the tensor groups of a stream."""
        whole = [self._whole()]
        if self.session is None:
            return feed_rows(feed), whole
        split = self._can_split(feed, feed_rows(feed))
        shapes = {k: ((1, *v.shape[1:]) if split else v.shape) for k, v in feed.items()}
        sizes = _tensor_bytes(self.model, shapes, self.computed)
        per_sample = sum(sizes.values())
        if per_sample <= RUN_BYTES:
            return max(1, RUN_BYTES // max(per_sample, 1)), whole
        groups, group, held = [], [], 0
        for name in sizes:
            if group and held + sizes[name] > RUN_BYTES:
                groups.append(group)
                group, held = [], 0
            group.append(name)
            held += sizes[name]
        groups.append(group)
        log.info(
            "probe: %d tensors (%d MB a sample) read in %d groups",
            len(self.computed),
            per_sample >> 20,
            len(groups),
        )
        inputs = [t for t in self.tensors if t not in self.computed]
        # Group sessions run in turn on every sample. An arena keeps its first region even when
        # given back, so each would hold its own (the detector: 1.7 GB instead of 1.2 GB).
        return 1, [
            _Group(self._session(g, True, arena=False), None, g, g + inputs * (i == 0))
            for i, g in enumerate(groups)
        ]

    def _split(self, feed: Feed, rows_per_run: int) -> Iterator[Feed]:
        rows = feed_rows(feed)
        if not self._can_split(feed, rows) or rows <= rows_per_run:
            yield feed
            return
        for start in range(0, rows, rows_per_run):
            yield {name: array[start : start + rows_per_run] for name, array in feed.items()}

    def _can_split(self, feed: Feed, rows: int) -> bool:
        return (
            self.splittable
            and rows > 1
            and all(array.ndim and array.shape[0] == rows for array in feed.values())
        )


def zip_last(items: list) -> Iterator[tuple[bool, object]]:
    """(is the last item, item) for each item."""
    return ((i == len(items) - 1, item) for i, item in enumerate(items))


def _tensor_bytes(model: onnx.ModelProto, inputs: dict, names: list[str]) -> dict[str, int]:
    """Bytes of each tensor for inputs of these shapes, in the graph's order; a tensor whose
    size inference cannot tell counts as the largest one it can."""
    info = infer_shapes_at(model, {k: tuple(v) for k, v in inputs.items()})
    sizes: dict[str, int | None] = {}
    for name in names:
        shape = info.static_shape(name)
        dtype = info.dtypes.get(name, onnx.TensorProto.FLOAT)
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize
        sizes[name] = None if shape is None else int(np.prod(shape, dtype=np.int64)) * itemsize
    largest = max((v for v in sizes.values() if v is not None), default=0)
    order = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    return {
        name: largest if sizes[name] is None else sizes[name]
        for name in sorted(names, key=lambda n: order.get(n, -1))
    }


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
