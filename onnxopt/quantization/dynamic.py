"""Dynamic-activation int8: MatMul/Gemm with a constant weight, the activation quantized per run.

Each planned node becomes

    x -> DynamicQuantizeLinear -> (x_u8, x_scale, x_zero_point)
    MatMulInteger(x_u8, w_i8, x_zero_point, w_zero_point) -> Cast(float)
    Mul(x_scale, w_scale) ; Mul(cast, that) [-> Add(., bias)]

which ORT's CPU graph optimizer fuses into MatMulIntegerToFloat (bias Add included when the
bias is a constant initializer at the Add's second input) and then, the DynamicQuantizeLinear
read by that node alone, into DynamicQuantizeMatMul. One DynamicQuantizeLinear is written per
node; where several nodes read one tensor (Q/K/V projections) ORT merges them into one and runs
those nodes as MatMulIntegerToFloat on the shared quantization. Weights are symmetric int8
with one scale per output column (the kernels take a per-column B scale and zero point).

The activation range is taken per run, so no activation calibration is needed; calibration
data still serves GPTQ weight rounding (input second moments) and the pass's gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from onnxopt.ir.graph import GraphIndex, Names, is_onnx_domain, node_attr
from onnxopt.ir.qdq import add_initializers
from onnxopt.numerics.rounding import gptq
from onnxopt.quantization.embedding import embedding_nodes, plan_embeddings, quantize_table
from onnxopt.quantization.fallback import SENSITIVITY_SAMPLES, FallbackResult, search_fallback
from onnxopt.quantization.params import quantize_weight, weight_scales
from onnxopt.quantization.plan import excluded
from onnxopt.runtime.fidelity import ReferenceScorer

log = logging.getLogger(__name__)

FLOAT = onnx.TensorProto.FLOAT
TRANSFORMER_OPS = frozenset({"LayerNormalization", "Softmax"})
CONV_OPS = frozenset({"Conv", "ConvTranspose"})


@dataclass(frozen=True)
class DynamicNode:
    """A node to rewrite: its input, its weight as (K inputs, N outputs), its bias if any."""

    name: str
    op_type: str
    input: str
    output: str
    weight: str
    trans_b: bool
    bias: str | None  # Gemm's C (a constant); a MatMul's bias stays in the Add that follows


@dataclass
class DynamicPlan:
    nodes: dict[str, DynamicNode] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)  # Gather node -> its int8 table
    skipped: list[str] = field(default_factory=list)

    def units(self) -> dict[str, frozenset[str]]:
        """The fallback's units: each rewritten node on its own."""
        return {name: frozenset({name}) for name in (*self.nodes, *self.tables)}

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {"Gather": len(self.tables)} if self.tables else {}
        for node in self.nodes.values():
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        return dict(sorted(counts.items()))


def choose_activations(model: onnx.ModelProto, requested: str) -> tuple[str, str]:
    """("static" or "dynamic", why). `auto` picks dynamic for a transformer-like graph: more
    MatMul/Gemm nodes with a constant weight than Conv nodes, and LayerNormalization or
    Softmax present (activations with per-input outlier ranges that one calibrated range
    per tensor serves badly)."""
    if requested != "auto":
        return requested, f"activations={requested} requested"
    index = GraphIndex(model.graph)
    ops = {n.op_type for n in model.graph.node if is_onnx_domain(n)}
    weighted = sum(
        1
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and index.is_constant(n.input[1])
    )
    convs = sum(1 for n in model.graph.node if n.op_type in CONV_OPS)
    markers = sorted(ops & TRANSFORMER_OPS)
    if weighted > convs and markers:
        return "dynamic", (
            f"transformer-like: {weighted} MatMul/Gemm with constant weights, {convs} Conv, "
            f"{'+'.join(markers)} present: activations quantized per run"
        )
    why = "no LayerNormalization/Softmax" if not markers else f"{convs} Conv >= {weighted} MatMul"
    return "static", f"not transformer-like ({why}): calibrated static activations"


def plan_dynamic(
    model: onnx.ModelProto,
    dtypes: dict[str, int],
    exclude: tuple[str, ...],
    frozen: frozenset[str] = frozenset(),
    tables: bool = True,
) -> DynamicPlan:
    """Which MatMul/Gemm nodes run in dynamic int8, and why the others stay float. `frozen`
    weights (codebooks written by `share`) stay float: their codes would be lost."""
    index = GraphIndex(model.graph)
    plan = DynamicPlan()
    activations: list[str] = []  # weight input computed at run time (attention)
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or not is_onnx_domain(node):
            continue
        if excluded(node, exclude):
            plan.skipped.append(f"{node.op_type} '{node.name}': excluded by option")
            continue
        if not index.is_constant(node.input[1]):
            activations.append(node.name)
            continue
        reason = _refusal(node, index, dtypes)
        if reason is None and node.input[1] in frozen:
            reason = "weight is a codebook (share): kept as its codebook"
        if reason is not None:
            plan.skipped.append(f"{node.op_type} '{node.name}': {reason}; stays float")
            continue
        trans_b = node.op_type == "Gemm" and bool(node_attr(node, "transB", 0))
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else None
        plan.nodes[node.name] = DynamicNode(
            node.name,
            node.op_type,
            node.input[0],
            node.output[0],
            node.input[1],
            trans_b,
            bias or None,
        )
    if activations:
        shown = ", ".join(f"'{n}'" for n in activations[:4])
        plan.skipped.append(
            f"{len(activations)} MatMul/Gemm of two activations (attention scores and context) "
            f"stay float: MatMulInteger needs a constant weight ({shown}"
            f"{', ...' if len(activations) > 4 else ''})"
        )
    if tables:
        plan.tables, skipped = plan_embeddings(model, exclude, frozen)
        plan.skipped.extend(skipped)
    return plan


def _refusal(node: onnx.NodeProto, index: GraphIndex, dtypes: dict[str, int]) -> str | None:
    weight = index.constant(node.input[1])
    if weight.dtype != np.float32 or weight.ndim != 2:
        return f"weight is {weight.dtype} of rank {weight.ndim}, not a float32 matrix"
    if dtypes.get(node.input[0], FLOAT) != FLOAT:
        return "input is not float32"
    if node.op_type == "Gemm":
        if node_attr(node, "transA", 0):
            return "Gemm with transA=1"
        if (
            float(node_attr(node, "alpha", 1.0)) != 1.0
            or float(node_attr(node, "beta", 1.0)) != 1.0
        ):
            return "Gemm with alpha or beta other than 1"
        if len(node.input) > 2 and node.input[2]:
            bias = index.constant(node.input[2])
            if bias is None or bias.ndim != 1:
                return "Gemm bias is not a constant vector"
    return None


def weight_matrix(index: GraphIndex, node: DynamicNode) -> np.ndarray:
    """The weight as (K inputs, N outputs), the layout MatMulInteger reads."""
    weight = index.constant(node.weight)
    return weight.T if node.trans_b else weight


def quantize_matrix(
    weight: np.ndarray, per_channel: bool, hessian: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes (K, N), scales (N,) or scalar) of a (K, N) weight; GPTQ given a hessian."""
    scales = weight_scales(weight, 1 if per_channel else None)
    if hessian is None:
        codes = quantize_weight(weight, scales, 1 if per_channel else None)
    else:
        codes = gptq(weight.T.astype(np.float64), scales, hessian).T
    return np.ascontiguousarray(codes), scales


def quantize_weights(
    model: onnx.ModelProto,
    plan: DynamicPlan,
    per_channel: bool,
    hessians: dict[str, np.ndarray] | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Node name -> (int8 codes (K, N), scales) of every planned node's weight, and of every
    planned Gather's table (see `embedding`)."""
    index = GraphIndex(model.graph)
    weights = {
        name: quantize_matrix(weight_matrix(index, node), per_channel, (hessians or {}).get(name))
        for name, node in plan.nodes.items()
    }
    for name, table in plan.tables.items():
        weights[name] = quantize_table(index.constant(table))
    return weights


def build_dynamic(
    model: onnx.ModelProto,
    plan: DynamicPlan,
    weights: dict[str, tuple[np.ndarray, np.ndarray]],
    kept: frozenset[str] = frozenset(),
) -> onnx.ModelProto:
    """A copy of `model` with every planned node but those `kept` float in the dynamic int8
    pattern; `weights` from `quantize_weights`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = Names(graph)
    rewritten: list[onnx.NodeProto] = []
    stored: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        if node.name in plan.tables and node.name not in kept:
            rewritten.extend(embedding_nodes(graph, names, node, weights[node.name], stored))
            continue
        planned = plan.nodes.get(node.name)
        if planned is None or node.name in kept:
            rewritten.append(node)
            continue
        rewritten.extend(_pattern(graph, names, planned, *weights[node.name]))
    del graph.node[:]
    graph.node.extend(rewritten)
    _bias_second(graph, {n for n in plan.nodes if n not in kept}, plan)
    return out


def search_dynamic_fallback(model, plan, weights, data, options, provider) -> FallbackResult:
    """Keep float the fewest nodes, most sensitive first, until the fidelity targets hold on
    the calibration data (see `fallback.search_fallback`; each node is its own unit)."""
    return search_fallback(
        plan.units(),
        lambda kept: build_dynamic(model, plan, weights, kept),
        ReferenceScorer(model, data, SENSITIVITY_SAMPLES, provider),
        ReferenceScorer(model, data, None, provider),
        options.target_cosine,
        options.target_top1,
    )


def _pattern(graph, names, node: DynamicNode, codes, scales) -> list[onnx.NodeProto]:
    base = node.name
    fresh = {
        k: names.fresh(f"{base}_{k}")
        for k in ("x_u8", "x_scale", "x_zp", "int32", "float", "scale", "w_i8", "w_scale", "w_zp")
    }
    add_initializers(
        graph,
        [
            (fresh["w_i8"], codes),
            (fresh["w_scale"], scales if scales.size > 1 else scales.reshape(())),
            (fresh["w_zp"], np.zeros(scales.shape if scales.size > 1 else (), np.int8)),
        ],
    )
    scaled = names.fresh(f"{base}_scaled") if node.bias else node.output
    nodes = [
        helper.make_node(
            "DynamicQuantizeLinear",
            [node.input],
            [fresh["x_u8"], fresh["x_scale"], fresh["x_zp"]],
            name=names.fresh(f"{base}_DynamicQuantizeLinear"),
        ),
        helper.make_node(
            "MatMulInteger",
            [fresh["x_u8"], fresh["w_i8"], fresh["x_zp"], fresh["w_zp"]],
            [fresh["int32"]],
            name=names.fresh(f"{base}_MatMulInteger"),
        ),
        helper.make_node(
            "Cast", [fresh["int32"]], [fresh["float"]], to=FLOAT, name=names.fresh(f"{base}_Cast")
        ),
        helper.make_node(
            "Mul",
            [fresh["x_scale"], fresh["w_scale"]],
            [fresh["scale"]],
            name=names.fresh(f"{base}_scale_Mul"),
        ),
        helper.make_node(
            "Mul", [fresh["float"], fresh["scale"]], [scaled], name=names.fresh(f"{base}_Mul")
        ),
    ]
    if node.bias:
        nodes.append(
            helper.make_node(
                "Add", [scaled, node.bias], [node.output], name=names.fresh(f"{base}_bias")
            )
        )
    return nodes


def _bias_second(graph: onnx.GraphProto, rewritten: set[str], plan: DynamicPlan) -> None:
    """Put a constant bias at the second input of the Add after a rewritten MatMul: ORT fuses
    the bias into MatMulIntegerToFloat only from there (Add is commutative)."""
    index = GraphIndex(graph)
    outputs = {
        n.output for n in plan.nodes.values() if n.op_type == "MatMul" and n.name in rewritten
    }
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or node.input[1] not in outputs:
            continue
        if index.is_constant(node.input[0]) and len(index.consumers.get(node.input[1], [])) == 1:
            node.input[0], node.input[1] = node.input[1], node.input[0]
