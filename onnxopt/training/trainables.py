"""Which constants of an ONNX graph distillation may train, and how (read-only; no torch).

Shapes never change and every tensor keeps its element type, so a trained model has exactly the
layout it came with (a pruned model stays pruned; QDQ stays where ORT fuses it):

- `direct`: a float constant that reaches a layer's weight or bias input (Conv, ConvTranspose,
  Gemm, MatMul, the affine parameters of BatchNormalization/LayerNormalization/
  InstanceNormalization, the bias Add after a MatMul), possibly through the ops a decoder or an
  export puts in between (Reshape, Transpose, Mul...).
- `codebook`: a float constant read through the data input of a Gather/GatherElements: in a
  `share` output, the codebook centroids and the per-channel scales that multiply them into
  the decoder's table. The indices stay fixed and gradients reach the table through the
  gather; each entry stands for many weights, so these train at their own learning rate.
- `fake_quant`: an int8/uint8 weight read by a DequantizeLinear: it trains as a float latent
  (its dequantized value) rounded straight-through to the graph's integer grid, with the
  graph's scale, zero point and range. The int8 weight of quant's dynamic pattern
  (`onnxopt/quantization/dynamic.py`: MatMulInteger -> Cast -> Mul by x_scale * w_scale)
  trains the same way, with the w_scale constant of that Mul as its per-column scale; its
  float bias (the Add after the Mul) trains as `direct`.
- `log_scale`: the scale of a QuantizeLinear on an activation (LSQ-style; trained as a
  log-factor on the graph's value, so it stays positive, moves relative to its size, and is
  exactly the graph's until it trains). Its DequantizeLinear
  partners share the initializer, so they follow.
- `derived_bias`: an int32 bias read by a DequantizeLinear whose scale is
  activation scale x weight scale: it trains as a float latent; its scale is recomputed from
  the (trained) activation scale and its integers re-derived.

Everything else stays as it is; `declined` says which weight-like constants were left fixed and
why (e.g. an int8 codebook of `share,quant`, whose codes are shared across a per-channel scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx

from onnxopt.ir.graph import GraphIndex, node_attr

FLOAT = onnx.TensorProto.FLOAT
INTEGER_GRIDS = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255)}

WEIGHT_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "InstanceNormalization": (1, 2),
    "MatMulInteger": (1,),
}
"""The inputs of each layer type that hold learned parameters (when they are constants)."""

PASS_THROUGH = {
    "Reshape": (0,),
    "Transpose": (0,),
    "Squeeze": (0,),
    "Unsqueeze": (0,),
    "Flatten": (0,),
    "Identity": (0,),
    "Cast": (0,),
    "Mul": (0, 1),
    "Gather": (0,),
    "GatherElements": (0,),
    "Concat": None,  # every input
}
"""Constant-only ops a weight may pass through on its way to a layer, with the inputs that
carry its values (the others — indices, shapes — stay fixed)."""


@dataclass(frozen=True)
class Trainable:
    """One constant that trains. `scale`/`zero_point`: the weight DequantizeLinear's inputs
    (`fake_quant`); `activation_scale`/`weight_scale`/`bias_scale`: what a `derived_bias`'s
    scale is the product of, and its own scale constant."""

    name: str
    kind: str  # direct | codebook | fake_quant | log_scale | derived_bias
    scale: str = ""
    zero_point: str = ""
    axis: int = 1
    grid: tuple[int, int] = (0, 0)
    activation_scale: str = ""
    weight_scale: str = ""
    bias_scale: str = ""


@dataclass
class TrainPlan:
    trainables: list[Trainable] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.trainables:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        return counts


def plan_training(model: onnx.ModelProto, *, scales: bool = True) -> TrainPlan:
    """What trains in `model` (see the module docstring); `scales=False` keeps activation
    scales (and so int32 biases' scales) fixed."""
    index = GraphIndex(model.graph)
    types = _element_types(index)
    plan = TrainPlan()
    chosen: dict[str, Trainable] = {}
    if scales:
        for node in model.graph.node:
            scale = _activation_scale(node, index)
            if scale is not None:
                chosen.setdefault(scale, Trainable(scale, "log_scale"))
    for node, slot in _weight_slots(model.graph, index):
        for leaf, via_dq, gathered in _leaves(node.input[slot], index):
            item = _classify(leaf, via_dq, gathered, node, slot, index, types, chosen,
                             plan.declined)
            if item is not None and item.name not in chosen:
                chosen[item.name] = item
    order = {"log_scale": 0, "direct": 1, "codebook": 2, "fake_quant": 3, "derived_bias": 4}
    plan.trainables = sorted(chosen.values(), key=lambda t: order[t.kind])
    return plan


def _element_types(index: GraphIndex) -> dict[str, int]:
    types = {name: tensor.data_type for name, tensor in index.initializers.items()}
    for name, node in index.producer.items():
        if node.op_type == "Constant":
            value = index.constant(name)
            if value is not None:
                types[name] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    return types


def _activation_scale(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The scale constant of a QuantizeLinear on a computed (not constant) tensor."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 2:
        return None
    if index.is_constant(node.input[0]) or not index.is_constant(node.input[1]):
        return None
    return node.input[1]


def _weight_slots(graph: onnx.GraphProto, index: GraphIndex) -> Iterator[tuple]:
    for node in graph.node:
        slots = WEIGHT_SLOTS.get(node.op_type, ())
        for slot in slots:
            if slot < len(node.input) and node.input[slot] and _constant_derived(
                node.input[slot], index
            ):
                yield node, slot
        if node.op_type == "Add" and _follows_matmul(node, index):
            for slot, name in enumerate(node.input):
                if _constant_derived(name, index):
                    yield node, slot


def _follows_matmul(node: onnx.NodeProto, index: GraphIndex) -> bool:
    producers = [index.producer.get(name) for name in node.input]
    return any(p is not None and (p.op_type == "MatMul" or _rescales_integer_product(p, index))
               for p in producers)


def _rescales_integer_product(node: onnx.NodeProto, index: GraphIndex) -> bool:
    """Whether `node` is the Mul of quant's dynamic pattern that turns a MatMulInteger's
    product back into float (see `_dynamic_pattern`)."""
    if node.op_type != "Mul":
        return False
    for name in node.input:
        cast = index.producer.get(name)
        layer = index.producer.get(cast.input[0]) if cast and cast.op_type == "Cast" else None
        if layer is not None and layer.op_type == "MatMulInteger":
            pattern = _dynamic_pattern(layer, index)
            if pattern is not None and pattern[1] is node:
                return True
    return False


def _dynamic_pattern(layer: onnx.NodeProto,
                     index: GraphIndex) -> tuple[str, onnx.NodeProto] | None:
    """(the w_scale constant, the rescaling Mul) of quant's dynamic pattern around
    MatMulInteger `layer`: DynamicQuantizeLinear(x) -> (x_q, x_scale, _);
    MatMulInteger(x_q, W, ...) -> Cast -> Mul(., Mul(x_scale, w_scale)). None when the graph
    holds anything else."""
    quantizer = index.producer.get(layer.input[0])
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
        return None
    casts = index.consumers.get(layer.output[0], [])
    if len(casts) != 1 or casts[0].op_type != "Cast" or node_attr(casts[0], "to", 0) != FLOAT:
        return None
    muls = index.consumers.get(casts[0].output[0], [])
    if len(muls) != 1 or muls[0].op_type != "Mul":
        return None
    product = index.producer.get(next(i for i in muls[0].input if i != casts[0].output[0]))
    if product is None or product.op_type != "Mul" or quantizer.output[1] not in product.input:
        return None
    others = [i for i in product.input if i != quantizer.output[1]]
    if len(others) != 1 or not index.is_constant(others[0]):
        return None
    return others[0], muls[0]


def _constant_derived(name: str, index: GraphIndex, seen: dict[str, bool] | None = None) -> bool:
    """Whether `name` is computed from constants only (a decoder's output, a folded shape)."""
    seen = {} if seen is None else seen
    if name not in seen:
        seen[name] = False  # a cycle proves nothing
        node = index.producer.get(name)
        seen[name] = index.is_constant(name) or (
            node is not None and name not in index.graph_inputs
            and all(_constant_derived(i, index, seen) for i in node.input if i)
        )
    return seen[name]


GATHERS = frozenset({"Gather", "GatherElements"})


def _leaves(name: str, index: GraphIndex, via_dq: onnx.NodeProto | None = None,
            gathered: bool = False):
    """(constant, the DequantizeLinear it was read through or None, whether a gather read it)
    for each constant whose values reach `name` through pass-through ops."""
    if index.is_constant(name):
        yield name, via_dq, gathered
        return
    node = index.producer.get(name)
    if node is None:
        return
    if node.op_type == "DequantizeLinear":
        yield from _leaves(node.input[0], index, node, gathered)
        return
    carried = PASS_THROUGH.get(node.op_type, ())
    for slot, source in enumerate(node.input):
        if source and (carried is None or slot in carried):
            yield from _leaves(source, index, via_dq, gathered or node.op_type in GATHERS)


def _classify(leaf, via_dq, gathered, layer, slot, index, types, chosen,
              declined) -> Trainable | None:
    dtype = types.get(leaf)
    if layer.op_type == "MatMulInteger":
        return _dynamic_weight(leaf, layer, index, types, declined)
    if via_dq is None:
        return Trainable(leaf, "codebook" if gathered else "direct") if dtype == FLOAT else None
    if via_dq.input[0] != leaf:
        declined.append(f"'{leaf}': integer codes read through a decoder before "
                        f"DequantizeLinear '{via_dq.name}' stay fixed")
        return None
    if dtype in INTEGER_GRIDS:
        return _fake_quant(leaf, via_dq, types)
    if dtype == onnx.TensorProto.INT32 and slot == 2:
        return _derived_bias(leaf, via_dq, layer, index, chosen, declined)
    return None


def _fake_quant(leaf, dq, types) -> Trainable:
    zero_point = dq.input[2] if len(dq.input) > 2 else ""
    grid = _weight_grid(types[leaf])
    axis = node_attr(dq, "axis", 1)
    return Trainable(leaf, "fake_quant", scale=dq.input[1], zero_point=zero_point, axis=axis,
                     grid=grid)


def _weight_grid(dtype: int) -> tuple[int, int]:
    if dtype == onnx.TensorProto.INT8:
        return (-127, 127)  # symmetric weights: quant never writes -128 (and ORT's VNNI
        # kernels would overflow on it), so training keeps to the same range
    return INTEGER_GRIDS[dtype]


def _dynamic_weight(leaf, layer, index, types, declined) -> Trainable | None:
    pattern = _dynamic_pattern(layer, index)
    if pattern is None or layer.input[1] != leaf or types.get(leaf) not in INTEGER_GRIDS:
        declined.append(f"'{leaf}': integer weight of MatMulInteger '{layer.name}' outside "
                        "quant's dynamic pattern (Cast, then a Mul by x_scale * w_scale), fixed")
        return None
    zero_point = layer.input[3] if len(layer.input) > 3 else ""
    grid = _weight_grid(types[leaf])
    # one scale per output column: the last axis of the (K, N) weight
    return Trainable(leaf, "fake_quant", scale=pattern[0], zero_point=zero_point, axis=-1,
                     grid=grid)


def _derived_bias(leaf, dq, layer, index, chosen, declined) -> Trainable | None:
    """An int32 bias whose scale is x_scale * w_scale, when both are at hand and the bias scale
    is its own constant."""
    x_dq = index.producer.get(layer.input[0])
    w_dq = index.producer.get(layer.input[1])
    if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or (
        w_dq.op_type != "DequantizeLinear"
    ):
        declined.append(f"'{leaf}': int32 bias without an activation and a weight scale, fixed")
        return None
    bias_scale = dq.input[1]
    readers = index.consumers.get(bias_scale, [])
    if len(readers) != 1 or not index.is_constant(bias_scale):
        declined.append(f"'{leaf}': its scale '{bias_scale}' is shared, fixed")
        return None
    x_scale = x_dq.input[1]
    if x_scale not in chosen and not index.is_constant(x_scale):
        declined.append(f"'{leaf}': activation scale '{x_scale}' is not a constant, fixed")
        return None
    return Trainable(leaf, "derived_bias", activation_scale=x_scale, weight_scale=w_dq.input[1],
                     bias_scale=bias_scale, axis=0)
