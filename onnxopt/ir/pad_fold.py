"""Fold a constant zero `Pad` into the Conv (or AveragePool) that reads it.

TF-style SAME padding exported to ONNX puts an explicit `Pad` before each strided convolution
(EfficientNet-Lite, MobileNet exports from TF/Keras and from PyTorch ports with `ZeroPad2d`).
ONNX Runtime neither removes it nor quantizes through it: the int8 graph keeps a Pad with a
DequantizeLinear/QuantizeLinear pair around it. A Conv already pads with zeros, so
`Conv(Pad(x, p))` equals `Conv(x)` with p added to the Conv's own `pads`.

The rule: a Pad folds when
- it is in the ONNX domain, with mode `constant` (the default) and a padding value of 0
  (attribute `value` in Pad-2; the optional `constant_value` input from Pad-11 on; absent = 0);
- its pads are constant (attribute in Pad-2; a constant input from Pad-11 on, limited to the
  constant `axes` input of Pad-18 when present), not negative, and 0 on the batch and channel
  axes;
- its output has one reader and is no graph output, and that reader is a Conv reading it as its
  data input, or an AveragePool with `count_include_pad=1` (the padded zeros are then counted,
  as they were when the Pad made them), with `auto_pad` NOTSET (explicit pads to add to).
Anything else keeps the Pad, with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, is_onnx_domain, node_attr, set_attribute

POOLS_THAT_COUNT_PADS = ("AveragePool",)


def fold_pads(graph: onnx.GraphProto) -> tuple[int, list[str]]:
    """Fold every foldable Pad of `graph` (main graph only) into its reader; returns
    (folded, one reason per Pad kept)."""
    index = GraphIndex(graph)
    folded, kept = 0, []
    for pad in [n for n in graph.node if n.op_type == "Pad" and is_onnx_domain(n)]:
        reader = index.single_consumer(pad.output[0])
        reason = _refusal(pad, reader, index)
        if reason is not None:
            kept.append(f"Pad '{pad.name or pad.output[0]}' not folded: {reason}")
            continue
        spatial = _spatial_pads(pad, reader, index)
        if isinstance(spatial, str):
            kept.append(f"Pad '{pad.name or pad.output[0]}' not folded: {spatial}")
            continue
        _fold(graph, index, pad, reader, spatial)
        folded += 1
    return folded, kept


def _refusal(pad: onnx.NodeProto, reader, index: GraphIndex) -> str | None:
    mode = node_attr(pad, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode != "constant":
        return f"mode '{mode}' (only constant padding is what a Conv does)"
    value = _pad_value(pad, index)
    if value is None:
        return "the padding value is not a constant"
    if value != 0:
        return f"the padding value is {value:g}, not 0"
    if reader is None:
        return "its output has several readers or is a graph output"
    if not is_onnx_domain(reader) or reader.op_type not in ("Conv", *POOLS_THAT_COUNT_PADS):
        return f"read by {reader.op_type}, not a Conv or an AveragePool"
    if reader.input[0] != pad.output[0]:
        return f"{reader.op_type} reads it as a weight or bias"
    auto_pad = node_attr(reader, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad != "NOTSET":
        return f"{reader.op_type} has auto_pad {auto_pad} (no explicit pads to add to)"
    if reader.op_type in POOLS_THAT_COUNT_PADS and not node_attr(reader, "count_include_pad", 0):
        return "AveragePool with count_include_pad=0 would not count the padded zeros"
    return None


def _pad_value(pad: onnx.NodeProto, index: GraphIndex) -> float | None:
    """The padding value (0.0 when absent), or None when it is not a constant."""
    if len(pad.input) > 2 and pad.input[2]:
        value = index.constant(pad.input[2])
        return None if value is None or value.size != 1 else float(value.reshape(-1)[0])
    return float(node_attr(pad, "value", 0.0))


def _spatial_pads(pad: onnx.NodeProto, reader, index: GraphIndex) -> list[int] | str:
    """The Pad's begin and end pads of the reader's spatial axes, in the reader's `pads`
    layout (begins, then ends), or why they cannot be folded."""
    spatial = _spatial_rank(reader, index)
    if spatial is None:
        return f"{reader.op_type}'s rank is unknown (no constant weight or kernel_shape)"
    rank = spatial + 2
    if len(pad.input) > 1 and pad.input[1]:
        pads = index.constant(pad.input[1])
        if pads is None:
            return "its pads are not a constant input"
    else:
        pads = np.asarray(node_attr(pad, "pads", []), np.int64)
    pads = pads.astype(np.int64).reshape(-1)
    axes = list(range(rank))
    if len(pad.input) > 3 and pad.input[3]:
        given = index.constant(pad.input[3])
        if given is None:
            return "its axes are not a constant input"
        axes = [int(a) % rank for a in given.reshape(-1)]
    if pads.size != 2 * len(axes):
        return f"{pads.size} pads for {len(axes)} axes"
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = pads[i], pads[len(axes) + i]
    if (full < 0).any():
        return "negative pads (a crop)"
    if full[[0, 1, rank, rank + 1]].any():
        return "it pads the batch or channel axis"
    return [int(v) for v in (*full[2:rank], *full[rank + 2 :])]


def _spatial_rank(reader: onnx.NodeProto, index: GraphIndex) -> int | None:
    kernel = node_attr(reader, "kernel_shape", None)
    if kernel:
        return len(kernel)
    if reader.op_type == "Conv" and len(reader.input) > 1:
        weight = index.constant(reader.input[1])
        if weight is not None:
            return weight.ndim - 2
    return None


def _fold(graph, index: GraphIndex, pad, reader, spatial: list[int]) -> None:
    own = node_attr(reader, "pads", None) or [0] * len(spatial)
    index.forget(reader)
    index.forget(pad)
    set_attribute(reader, "pads", [int(a) + b for a, b in zip(own, spatial, strict=True)])
    reader.input[0] = pad.input[0]
    graph.node.remove(pad)
    index.learn(reader)
