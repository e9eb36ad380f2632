"""`cleanup`: BatchNormalization folding, constant folding, pass-through removal, dead code.

Rewrites, in the main graph:
- BatchNormalization (inference form) after a Conv, ConvTranspose or Gemm whose output only it
  reads, whose weights and the BN parameters are constants: folded into the layer's weights.
- Identity, Dropout (inference: no mask output read, training_mode absent or false), and
  Reshape whose inferred input and output shapes are equal and static: removed.
- Constant subgraphs: evaluated (onnx-graphsurgeon + ORT), unless the result exceeds
  `fold_limit_mb`; a folding error is reported, never hidden, and folding is then skipped.
  Codebook decoders and transposed views of deduplicated constants (`share`) are kept:
  folding them would undo the compression, and ONNX Runtime folds them at session load.
- Pad with constant zero padding of the spatial axes whose only reader is a Conv (or an
  AveragePool counting pads) with explicit pads: added to the reader's pads (TF-style SAME
  exports; ORT keeps such a Pad in float between Q/DQ pairs). The rule and each reason a Pad
  is kept: `onnxopt.ir.pad_fold`.
- Div by a floating-point constant: a Mul by its reciprocal (ONNX Runtime has an int8 Mul and
  no int8 Div; `onnxopt.ir.div_to_mul`).
- Nodes and initializers no output depends on: removed; nodes sorted topologically.

Refuses (and reports) a fold when a weight is not constant or the layer's output has other readers.
Subgraphs (If/Loop/Scan bodies) are left as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analyses.codebooks import compressed_tensors
from onnxopt.infra.analysis import shapes_of
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import Pass, PassContext, PassResult
from onnxopt.ir.div_to_mul import divs_to_muls
from onnxopt.ir.edit import bypass_node, fold_constants, remove_dead_code
from onnxopt.ir.graph import (
    GraphIndex,
    Names,
    is_onnx_domain,
    make_tensor,
    node_attr,
    set_attribute,
)
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.ir.layers import along_output_channels, output_channels
from onnxopt.ir.pad_fold import fold_pads
from onnxopt.ir.shapes import ShapeInfo

log = logging.getLogger(__name__)

FOLDABLE_LAYERS = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class CleanupOptions:
    fold_bn: bool = option(
        True, "fold BatchNormalization into the preceding Conv/ConvTranspose/Gemm"
    )
    fold_constants: bool = option(True, "evaluate subgraphs whose inputs are all constant")
    fold_limit_mb: float = option(
        64.0, "do not fold constants whose result exceeds this size (MB)", low=0
    )
    remove_passthrough: bool = option(True, "remove Identity, inference Dropout and no-op Reshape")
    fold_pad: bool = option(
        True, "fold a constant zero Pad into the Conv/AveragePool that reads it"
    )
    div_to_mul: bool = option(
        True, "turn a Div by a constant into a Mul by its reciprocal (int8 Mul exists, Div not)"
    )


class CleanupPass(Pass[CleanupOptions]):
    name = "cleanup"
    summary = "fold BatchNorm and constants, remove Identity/Dropout/no-op Reshape and dead code"
    Options = CleanupOptions
    preserves = frozenset()  # folds and removes nodes: no cached analysis stays valid
    # Before opset 7, BatchNormalization and Dropout carried is_test/spatial semantics.
    min_opset = 7

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        stats = {"bn_folded": 0, "passthrough_removed": 0, "nodes_before": len(model.graph.node)}
        initializers_before = len(model.graph.initializer)
        skipped: list[str] = []
        if self.options.remove_passthrough:
            shapes = shapes_of(ctx.analyses, model)
            stats["passthrough_removed"] = _remove_passthrough(model.graph, shapes, skipped)
        if self.options.fold_constants and stored_bytes(model) > PROTOBUF_SAFE_BYTES:
            skipped.append("constant folding skipped: the model is over 2 GB")
        elif self.options.fold_constants:
            try:
                limit = int(self.options.fold_limit_mb * 1e6)
                model = fold_constants(model, limit, frozenset(compressed_tensors(model.graph)))
            except Exception as exc:  # graphsurgeon re-raises ORT's errors of any type
                skipped.append(
                    f"constant folding skipped: {type(exc).__name__}: {exc}".splitlines()[0]
                )
        if self.options.fold_pad:
            stats["pads_folded"], kept = fold_pads(model.graph)
            skipped.extend(kept)
        if self.options.div_to_mul:
            stats["divs_to_muls"], kept = divs_to_muls(model.graph)
            skipped.extend(kept)
        if self.options.fold_bn:
            stats["bn_folded"] = _fold_batchnorms(model.graph, skipped)
        stats["dead_removed"] = remove_dead_code(model)
        stats["nodes_after"] = len(model.graph.node)
        changed = (
            stats["bn_folded"] > 0
            or stats.get("pads_folded", 0) > 0
            or stats.get("divs_to_muls", 0) > 0
            or stats["passthrough_removed"] > 0
            or stats["nodes_after"] != stats["nodes_before"]
            or len(model.graph.initializer) != initializers_before
        )
        return PassResult(model, changed, stats, skipped)


def _fold_batchnorms(graph: onnx.GraphProto, skipped: list[str]) -> int:
    folded = 0
    index, names = GraphIndex(graph), Names(graph)  # built once, kept current by _rewire
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization" and is_onnx_domain(n)]:
        reason = _fold_one(graph, index, names, bn)
        if reason is None:
            folded += 1
        else:
            skipped.append(f"BatchNormalization '{bn.name or bn.output[0]}' not folded: {reason}")
    return folded


def _fold_one(graph: onnx.GraphProto, index: GraphIndex, names: Names, bn) -> str | None:
    if len([o for o in bn.output if o]) != 1 or node_attr(bn, "training_mode", 0):
        return "training-mode BatchNormalization"
    layer = index.producer.get(bn.input[0])
    if layer is None or layer.op_type not in FOLDABLE_LAYERS or not is_onnx_domain(layer):
        return "not preceded by Conv/ConvTranspose/Gemm"
    if index.single_consumer(layer.output[0]) is not bn:
        return f"{layer.op_type} output has other readers (a node, a subgraph or a graph output)"
    params = [index.constant(name) for name in bn.input[1:5]]
    if any(p is None for p in params):
        inputs = [name for name in bn.input[1:5] if index.overridable(name)]
        if inputs:
            return (
                f"BatchNormalization parameters are graph inputs ('{inputs[0]}', ...: defaults "
                "a caller may override), not constants"
            )
        return "BatchNormalization parameters are not constant"
    weight = index.constant(layer.input[1])
    if weight is None or weight.dtype.kind != "f":
        return f"{layer.op_type} weight is not a float constant"
    bias_name = layer.input[2] if len(layer.input) > 2 and layer.input[2] else None
    channels = params[0].shape[0]
    bias = np.zeros(channels, weight.dtype) if bias_name is None else index.constant(bias_name)
    if bias is None:
        return f"{layer.op_type} bias is not constant"
    scale, beta, mean, var = (p.astype(np.float64) for p in params)
    mult = scale / np.sqrt(var + float(node_attr(bn, "epsilon", 1e-5)))
    folded = _folded_weights(layer, weight, bias, mult, channels)
    if isinstance(folded, str):
        return folded
    new_weight, effective_bias = folded
    new_bias = (effective_bias - mean) * mult + beta
    new_weight, new_bias = new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)
    _rewire(graph, index, names, layer, bn, new_weight, new_bias)
    return None


def _folded_weights(layer, weight, bias, mult, channels):
    """(scaled weight, bias as the BN sees it) in float64, or why the layer cannot take the fold."""
    w = weight.astype(np.float64)
    b = bias.astype(np.float64)
    if layer.op_type == "Conv":
        if w.shape[0] != channels or b.shape != (channels,):
            return "channel counts differ"
        return w * along_output_channels(mult, layer, w.ndim), b
    if layer.op_type == "ConvTranspose":
        group = int(node_attr(layer, "group", 1))
        c_in, per_group = w.shape[:2]
        if per_group * group != channels or b.shape != (channels,):
            return "channel counts differ"
        grouped = w.reshape(group, c_in // group, per_group, *w.shape[2:])
        scaled = grouped * mult.reshape(group, 1, per_group, *([1] * (w.ndim - 2)))
        return scaled.reshape(w.shape), b
    if output_channels(layer, w) != channels or b.size not in (1, channels):
        return "Gemm bias is not per output feature"
    beta = float(node_attr(layer, "beta", 1.0))
    scaled = w * along_output_channels(mult, layer, w.ndim)
    return scaled, beta * np.broadcast_to(b.reshape(-1), (channels,))


def _rewire(graph, index: GraphIndex, names: Names, layer, bn, weight, bias) -> None:
    """Point the layer at new weight/bias initializers and let it produce the BN's output;
    `index` is told of each edit."""
    prefix = layer.name or layer.output[0]
    weight_name = names.fresh(f"{prefix}.weight_bnfolded")
    bias_name = names.fresh(f"{prefix}.bias_bnfolded")
    tensors = [make_tensor(weight_name, weight), make_tensor(bias_name, bias)]
    graph.initializer.extend(tensors)
    for tensor in tensors:
        index.add(tensor)
    index.forget(layer)
    index.forget(bn)
    layer.input[1] = weight_name
    if len(layer.input) > 2:
        layer.input[2] = bias_name
    else:
        layer.input.append(bias_name)
    if layer.op_type == "Gemm":
        set_attribute(layer, "beta", 1.0)
    layer.output[0] = bn.output[0]
    graph.node.remove(bn)
    index.learn(layer)


def _remove_passthrough(graph: onnx.GraphProto, shapes: ShapeInfo, skipped: list[str]) -> int:
    removed = 0
    for node in list(graph.node):
        if not is_onnx_domain(node):
            continue
        if node.op_type == "Reshape":
            if not _is_noop_reshape(node, shapes):
                continue
        elif not _is_passthrough(node):
            continue
        if bypass_node(graph, node):
            removed += 1
        else:
            skipped.append(
                f"{node.op_type} '{node.name or node.output[0]}' kept: "
                "it links a graph input to an output"
            )
    return removed


def _is_passthrough(node: onnx.NodeProto) -> bool:
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    mask_read = len(node.output) > 1 and bool(node.output[1])
    training = len(node.input) > 2 and bool(node.input[2])
    return not mask_read and not training


def _is_noop_reshape(node: onnx.NodeProto, shapes: ShapeInfo) -> bool:
    before = shapes.static_shape(node.input[0])
    after = shapes.static_shape(node.output[0])
    return before is not None and before == after
