"""Rewrite a float graph into QDQ form from a plan and the activations' parameters.

Each quantized tensor gets one QuantizeLinear and one DequantizeLinear per reading input slot
(ORT fuses a DQ only into a single consumer). Weights become int8 initializers behind a
per-channel DQ, biases int32 with scale x_scale * w_scale. Graph outputs keep their names and
float type: the last DQ writes them. Nodes are emitted in topological order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.analyses.input_moments import from_layer_matrix, layer_matrix
from onnxopt.ir.graph import GraphIndex, Names, node_attr
from onnxopt.ir.layers import output_channels
from onnxopt.ir.qdq import add_initializers, dequantize_node, quantize_node
from onnxopt.numerics.rounding import gptq
from onnxopt.quantization.params import (
    ActivationParams,
    bias_safe_scales,
    quantize_bias,
    quantize_weight,
    weight_scales,
)
from onnxopt.quantization.plan import Plan, WeightedNode


@dataclass
class BuildResult:
    quantize_nodes: int = 0
    dequantize_nodes: int = 0
    weights: int = 0
    weight_scales: dict[str, np.ndarray] = field(default_factory=dict)


def build_qdq(
    model: onnx.ModelProto,
    plan: Plan,
    params: dict[str, ActivationParams],
    bias_offsets: dict[str, np.ndarray] | None = None,
    hessians: dict[str, np.ndarray] | None = None,
    rounded: dict | None = None,
    weight_peaks: dict[str, np.ndarray] | None = None,
) -> tuple[onnx.ModelProto, BuildResult]:
    """A QDQ copy of `model`; `params` maps each root tensor to its parameters.

    `bias_offsets` (node name -> per-channel values) are added to the float bias before it is
    quantized (bias correction). Layers with an input second moment in `hessians` are rounded
    with GPTQ instead of to nearest; `rounded` caches those codes across calls. A weight in
    `weight_peaks` takes its scales from those magnitudes (>= its own) instead of its values.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(graph)
    names = Names(graph)
    result = BuildResult()
    before: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # node -> DQs it reads
    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # tensor -> Q/DQ after its producer
    fused = set(plan.fused)
    _param_initializers(graph, plan, params)
    graph_outputs = {o.name for o in graph.output}
    for tensor in sorted(plan.roots):
        root = plan.root(tensor)
        scale, zero_point = f"{root}_scale", f"{root}_zero_point"
        if tensor in plan.constants:
            quantized = names.fresh(f"{tensor}_quantized")
            value = _quantize_constant(plan.constants[tensor], params[root])
            add_initializers(graph, [(quantized, value)])
            source = tensor
        else:
            source = plan.sources[tensor]
            if source == tensor and tensor in graph_outputs:
                source = _rename_output(index, tensor, names.fresh(f"{tensor}_float"))
            quantized = names.fresh(f"{tensor}_quantized")
            read = source
            if _feeds_from_kept_float(index, plan, source):
                read = names.fresh(f"{source}_float_guard")
                after[source].append(onnx.helper.make_node("Sum", [source], [read], name=read))
            q = quantize_node(
                names.fresh(f"{tensor}_QuantizeLinear"), read, scale, zero_point, quantized
            )
            after[source].append(q)
            result.quantize_nodes += 1
        float_source = tensor not in plan.constants and not _runs_int8(index, plan, source)
        for user in index.consumers.get(tensor, []):
            if user.name in fused or (float_source and user.name not in plan.nodes):
                continue
            for slot, name in enumerate(user.input):
                if name != tensor:
                    continue
                output = names.fresh(f"{tensor}_dequantized")
                before[user.name].append(
                    dequantize_node(
                        names.fresh(f"{tensor}_DequantizeLinear"),
                        quantized,
                        scale,
                        zero_point,
                        output,
                    )
                )
                user.input[slot] = output
                result.dequantize_nodes += 1
        if tensor in graph_outputs:
            after[source].append(
                dequantize_node(
                    names.fresh(f"{tensor}_DequantizeLinear"), quantized, scale, zero_point, tensor
                )
            )
            result.dequantize_nodes += 1
    for node in graph.node:
        weighted = plan.weighted.get(node.name)
        if weighted is not None:
            offset = (bias_offsets or {}).get(node.name)
            hessian = (hessians or {}).get(node.name)
            before[node.name].extend(
                _quantize_weights(
                    graph,
                    index,
                    names,
                    node,
                    weighted,
                    plan,
                    params,
                    offset,
                    (hessian, rounded),
                    (weight_peaks or {}).get(weighted.weight),
                    result,
                )
            )
    _emit(graph, fused, before, after)
    return out, result


def _feeds_from_kept_float(index: GraphIndex, plan: Plan, tensor: str) -> bool:
    """Whether `tensor` comes from a node kept float (through Relu/Clip) that reads a quantized
    tensor: ORT would fuse that node's DQ, the node and the Q (and even quantize its float
    weights), so a one-input Sum separates them. A node reading only float tensors needs none."""
    producer = index.producer.get(tensor)
    while producer is not None and producer.op_type in ("Relu", "Clip") and producer.input:
        if producer.name in plan.kept_float:
            return _reads_quantized(producer, plan)
        producer = index.producer.get(producer.input[0])
    return (
        producer is not None
        and producer.name in plan.kept_float
        and _reads_quantized(producer, plan)
    )


def _runs_int8(index: GraphIndex, plan: Plan, tensor: str) -> bool:
    """Whether `tensor` is computed by an int8 node. A float node's output stays float for its
    float readers (a residual stream through Adds kept float is not rounded at every block)."""
    producer = index.producer.get(tensor)
    return producer is not None and (producer.name in plan.nodes or producer.name in plan.fused)


def _reads_quantized(node: onnx.NodeProto, plan: Plan) -> bool:
    return any(name in plan.roots for name in node.input)


def _param_initializers(graph, plan: Plan, params: dict[str, ActivationParams]) -> None:
    for root in sorted({plan.root(t) for t in plan.roots}):
        p = params[root]
        add_initializers(
            graph,
            [
                (f"{root}_scale", np.array(p.scale, dtype=np.float32)),
                (f"{root}_zero_point", np.array(p.zero_point, dtype=p.dtype)),
            ],
        )


def _quantize_constant(value: np.ndarray, p: ActivationParams) -> np.ndarray:
    info = np.iinfo(p.dtype)
    q = np.clip(np.round(value.astype(np.float64) / p.scale) + p.zero_point, info.min, info.max)
    return q.astype(p.dtype)


def _rename_output(index: GraphIndex, tensor: str, new: str) -> str:
    producer = index.producer[tensor]
    producer.output[list(producer.output).index(tensor)] = new
    return new


def _quantize_weights(
    graph, index, names, node, weighted: WeightedNode, plan, params, offset, rounding, peaks, result
):
    """Replace the node's weight (and bias) by int8 (int32) initializers behind a DQ."""
    x_scale = params[plan.root(weighted.input)].scale
    weight = index.constant(weighted.weight)
    axis = weighted.axis
    scales = weight_scales(weight if peaks is None else peaks, axis)
    bias = _float_bias(node, index, weighted, weight, offset)
    if bias is not None:
        scales = bias_safe_scales(bias, x_scale, scales)
    prefix = node.name
    scale_value = scales if axis is not None else scales.reshape(())
    w_name, s_name, z_name = (names.fresh(f"{prefix}.weight_{k}") for k in _PARTS)
    add_initializers(
        graph,
        [
            (w_name, _round(node, weight, scales, axis, *rounding)),
            (s_name, scale_value),
            (z_name, np.zeros(scale_value.shape, np.int8)),
        ],
    )
    node.input[1] = names.fresh(f"{prefix}.weight_dequantized")
    dq_name = names.fresh(f"{prefix}.weight_DequantizeLinear")
    nodes = [dequantize_node(dq_name, w_name, s_name, z_name, node.input[1], axis)]
    result.weights += 1
    result.weight_scales[node.name] = scales
    if bias is None:
        return nodes
    q_bias, b_scales = quantize_bias(bias, x_scale, scales)
    b_scale_value = b_scales if axis is not None else b_scales[:1].reshape(())
    b_name, bs_name, bz_name = (names.fresh(f"{prefix}.bias_{k}") for k in _PARTS)
    add_initializers(
        graph,
        [
            (b_name, q_bias),
            (bs_name, b_scale_value),
            (bz_name, np.zeros(b_scale_value.shape, np.int32)),
        ],
    )
    b_out = names.fresh(f"{prefix}.bias_dequantized")
    b_axis = 0 if axis is not None else None
    dq_name = names.fresh(f"{prefix}.bias_DequantizeLinear")
    nodes.append(dequantize_node(dq_name, b_name, bs_name, bz_name, b_out, b_axis))
    if len(node.input) > 2:
        node.input[2] = b_out
    else:
        node.input.append(b_out)
    if node.op_type == "Gemm":
        _set_beta_one(node)
    return nodes


_PARTS = ("quantized", "scale", "zero_point")


def _round(node, weight: np.ndarray, scales: np.ndarray, axis, hessian, cache) -> np.ndarray:
    """Int8 codes of `weight`: GPTQ when an input second moment is given, else nearest."""
    if hessian is None:
        return quantize_weight(weight, scales, axis)
    key = (node.name, scales.tobytes())
    if cache is not None and key in cache:
        return cache[key]
    trans_b = bool(node_attr(node, "transB", 0))
    matrix = layer_matrix(weight, node.op_type, trans_b)
    if hessian.ndim == 3:  # depthwise: one moment per input channel, `repeat` rows each
        hessian = np.repeat(hessian, matrix.shape[0] // hessian.shape[0], axis=0)
    codes = from_layer_matrix(gptq(matrix, scales, hessian), node.op_type, trans_b, weight.shape)
    if cache is not None:
        cache[key] = codes
    return codes


def _float_bias(node, index, weighted, weight, offset) -> np.ndarray | None:
    """The layer's bias (beta folded in, `offset` added) as a float64 vector, or None."""
    if node.op_type == "MatMul":
        return None
    bias = None
    if weighted.bias is not None:
        bias = index.constant(weighted.bias).astype(np.float64).reshape(-1)
        if node.op_type == "Gemm":
            bias = bias * float(node_attr(node, "beta", 1.0))
    if offset is not None:
        bias = offset.astype(np.float64) if bias is None else bias + offset
    if bias is None:
        return None
    return np.broadcast_to(bias, (output_channels(node, weight),)).copy()


def _set_beta_one(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.name == "beta":
            attr.f = 1.0
            return


def _emit(graph: onnx.GraphProto, fused: set[str], before, after) -> None:
    """Rebuild the node list: DQs before their reader, Qs right after their source's producer."""
    nodes: list[onnx.NodeProto] = []
    produced = {o for node in graph.node for o in node.output}
    for tensor in sorted(after):
        if tensor not in produced:  # graph inputs and initializers
            nodes.extend(after[tensor])
    for node in list(graph.node):
        if node.name in fused:
            continue
        nodes.extend(before.get(node.name, []))
        nodes.append(node)
        for output in node.output:
            nodes.extend(after.get(output, []))
    del graph.node[:]
    graph.node.extend(nodes)
