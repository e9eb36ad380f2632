"""Prune's reads of intermediate tensors on calibration data, batch by batch, through the
tensor probe (`onnxopt.runtime.probe`, cut down to the tensors read): per-channel moments for
importance, and consumer input covariances for the refit error."""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import Consumer
from onnxopt.data.feeds import feeds_cut_at
from onnxopt.data.sources import DataSource
from onnxopt.ir.graph import GraphIndex
from onnxopt.ir.shapes import ShapeInfo, infer_shapes
from onnxopt.pruning.rows import LayerRows
from onnxopt.runtime.probe import TensorProbe


def tensor_probe(
    model: onnx.ModelProto, names: list[str], provider: str, shapes: ShapeInfo | None = None
) -> TensorProbe:
    """The probe reading `names` of `model` (element types from `shapes`), cut down to them."""
    if not names:
        return TensorProbe(model, [], provider)
    shapes = shapes if shapes is not None else infer_shapes(model)
    return TensorProbe(model, names, provider, dtypes=shapes.dtypes, only=True)


def channel_moments(
    model: onnx.ModelProto,
    axes: dict[str, int],
    data: DataSource,
    provider: str,
    samples: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per entry of each tensor's axis `axes[name]`: (mean |x|, mean x^2) over the data."""
    names = sorted(axes)
    reader = tensor_probe(model, names, provider)
    sums: dict[str, list] = {}
    for feed in feeds_cut_at(data, samples):
        for name, value in reader.read(feed).items():
            moved = np.moveaxis(np.asarray(value, np.float64), axes[name], 0)
            flat = moved.reshape(moved.shape[0], -1)
            entry = sums.setdefault(name, [0.0, 0.0, 0])
            entry[0] = entry[0] + np.abs(flat).sum(1)
            entry[1] = entry[1] + (flat**2).sum(1)
            entry[2] += flat.shape[1]
    return {name: (s[0] / max(s[2], 1), s[1] / max(s[2], 1)) for name, s in sums.items()}


def consumer_grams(
    model: onnx.ModelProto,
    consumers: list[Consumer],
    data: DataSource,
    provider: str,
    samples: int,
    positions: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Per consumer name: covariance (raw second moment for MatMul) of its input features.

    Features are what the consumer's weights multiply: im2col columns for a Conv, sampled
    at `positions` output positions per image, as the reconstruction samples them.
    """
    index = GraphIndex(model.graph)
    shapes = {
        c.name: index.constant(model.graph.node[c.node].input[c.weight_index]).shape
        for c in consumers
    }
    usable = [c for c in consumers if LayerRows.supports(c.op_type, shapes[c.name])]
    rows = {c.name: LayerRows(model.graph.node[c.node], shapes[c.name]) for c in usable}
    names = sorted({n for c in usable for n in (c.input, c.output)})
    reader = tensor_probe(model, names, provider)
    sums: dict[str, list] = {c.name: [0, 0.0, 0.0] for c in usable}
    for batch, feed in enumerate(feeds_cut_at(data, samples)):
        values = reader.read(feed)
        for number, consumer in enumerate(usable):
            layer = rows[consumer.name]
            rng = np.random.default_rng([seed, number, batch])
            where = layer.sample(values[consumer.output], positions, rng)
            x = np.ascontiguousarray(layer.inputs(values[consumer.input], where), np.float32)
            entry = sums[consumer.name]
            entry[0] += x.shape[0]
            entry[1] = entry[1] + x.sum(0, dtype=np.float64)
            entry[2] = entry[2] + (x.T @ x).astype(np.float64)
    grams = {}
    for consumer in usable:
        n, sx, xx = sums[consumer.name]
        if n == 0:
            continue
        mean = sx / n if consumer.op_type != "MatMul" else np.zeros_like(sx)
        grams[consumer.name] = xx / n - np.outer(mean, mean)
    return grams
