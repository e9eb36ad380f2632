"""Decide what to quantize: which nodes run in int8, which tensors get a Q/DQ pair, which
Relu/Clip nodes the Q absorbs, and why the other candidates stay float.

A tensor's parameters come from its own calibrated range ("root") or, for the output of a data
movement op (Reshape, MaxPool, ...), from its input's: ORT drops such Q/DQ pairs only when both
carry the same scale and zero point.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, default_opset, is_onnx_domain, node_attr
from onnxopt.ir.layers import node_output_channel_axis
from onnxopt.quantization import stem
from onnxopt.quantization.rules import ACTIVATION_OPS, RULES, OpRule

FLOAT = onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class PlanConfig:
    provider: str = "cpu"
    per_channel: bool = True
    attention: bool = False
    exclude: tuple[str, ...] = ()
    keep_float: tuple[str, ...] = ()  # exact node names (accuracy-aware fallback)
    absorb_activations: bool = True  # False for symmetric activations: their Q cannot clamp at 0
    float_stem: bool = False  # keep an image stem and its block float (see `stem`)


@dataclass
class WeightedNode:
    name: str
    op_type: str
    input: str
    weight: str
    bias: str | None
    axis: int | None


@dataclass
class Plan:
    nodes: list[str] = field(default_factory=list)  # quantized nodes, graph order
    weighted: dict[str, WeightedNode] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)  # quantized tensor -> tensor of its params
    sources: dict[str, str] = field(default_factory=dict)  # quantized tensor -> tensor Q reads
    fused: dict[str, str] = field(default_factory=dict)  # absorbed Relu/Clip -> its producer
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # scalar operands
    skipped: list[str] = field(default_factory=list)
    op_types: dict[str, str] = field(default_factory=dict)
    kept_float: set[str] = field(default_factory=set)  # excluded nodes ORT must not fuse

    def calibration_tensors(self) -> list[str]:
        """Tensors whose ranges the parameters need, in a stable order."""
        own = {t for t, root in self.roots.items() if root == t and t not in self.constants}
        return sorted(own)

    def root(self, tensor: str) -> str:
        while self.roots[tensor] != tensor:
            tensor = self.roots[tensor]
        return tensor

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(self.op_types[n] for n in self.nodes).items()))


def excluded(node: onnx.NodeProto, patterns: tuple[str, ...]) -> bool:
    """Whether a pattern (glob) matches the node's name or op type."""
    return any(fnmatch.fnmatchcase(node.name, p) or node.op_type == p for p in patterns)


def make_plan(model: onnx.ModelProto, dtypes: dict[str, int], config: PlanConfig) -> Plan:
    graph = model.graph
    index = GraphIndex(graph)
    opset = default_opset(model)
    plan = Plan()
    candidates: dict[str, onnx.NodeProto] = {}
    stem_kept: dict[str, str] = {}
    for node in graph.node:
        rule = RULES.get(node.op_type) if is_onnx_domain(node) else None
        if rule is None:
            continue
        reason = _refusal(node, rule, index, dtypes, config, opset, stem_kept)
        if node.name in config.keep_float or excluded(node, config.exclude):
            plan.kept_float.add(node.name)
        if reason is not None:
            if rule.kind != "move":
                plan.skipped.append(f"{node.op_type} '{node.name}' stays float: {reason}")
            continue
        candidates[node.name] = node
    fusable = _fusable_activations(graph, index, candidates, config)
    active = _active(index, candidates, fusable)
    core = {
        n: node
        for n, node in candidates.items()
        if n in active and RULES[node.op_type].kind != "move"
    }
    moves = {
        n: node
        for n, node in candidates.items()
        if n in active and RULES[node.op_type].kind == "move"
    }
    for name, node in candidates.items():
        if name not in active and RULES[node.op_type].kind != "move":
            plan.skipped.append(f"{node.op_type} '{name}' stays float: {_why_inactive(node)}")
    _assign_tensors(plan, graph, index, core, moves, fusable, config)
    return plan


def activation_inputs(node: onnx.NodeProto, rule: OpRule, index: GraphIndex) -> list[str]:
    """The non-constant inputs of `node` that its int8 kernel reads quantized."""
    indices = range(len(node.input)) if rule.activations is None else rule.activations
    if node.op_type == "MatMul" and index.is_constant(node.input[1]):
        indices = (0,)
    return [node.input[i] for i in indices if i < len(node.input) and node.input[i]]


def _refusal(node, rule, index, dtypes, config, opset, stem_kept) -> str | None:
    if excluded(node, config.exclude):
        return "excluded by the exclude option"
    if node.name in config.keep_float:
        return "kept float by the accuracy-aware fallback"
    if config.provider == "cpu" and not rule.cpu:
        return "no int8 kernel on the CPU execution provider"
    if opset < rule.min_opset:
        return f"needs opset >= {rule.min_opset}"
    if rule.kind == "move" and len([o for o in node.output if o]) != 1:
        return "more than one output"
    for name in activation_inputs(node, rule, index):
        value = index.constant(name)
        if value is not None:
            if rule.kind == "binary" and value.dtype == np.float32 and value.size == 1:
                continue
            return f"constant operand '{name}' of {value.size} elements (not a weight input)"
        if index.is_constant(name):
            return f"operand '{name}' is a constant that cannot be read"
        if dtypes.get(name) != FLOAT:
            return f"input '{name}' is not float32"
    if rule.kind == "weighted":
        return _weighted_refusal(node, index, config) or _stem_refusal(
            node, index, config, stem_kept
        )
    return None


def _stem_refusal(node, index, config: PlanConfig, kept: dict[str, str]) -> str | None:
    """Why a conv at the start of an image model stays float on cpu (see `stem`), or None;
    `kept` collects the nodes so kept, in graph order."""
    if not config.float_stem or config.provider != "cpu":
        return None
    reason = stem.stem_block(node, index, kept)
    if reason is None:
        reason = stem.image_stem(node, index)
        if reason is not None:
            kept[node.name] = "stem"
    return reason


def _weighted_refusal(node, index, config) -> str | None:
    weight = index.constant(node.input[1])
    if weight is None:
        if node.op_type == "MatMul":
            if config.attention:
                return None
            return "MatMul of two activations (set attention=true to quantize it)"
        if index.overridable(node.input[1]):
            return (
                f"weight '{node.input[1]}' is also a graph input (a default a caller may "
                "override), not a constant"
            )
        return "weight is not a constant"
    if weight.dtype != np.float32:
        return f"weight is {weight.dtype}, not float32"
    if node.op_type == "MatMul" and weight.ndim != 2:
        return f"weight has rank {weight.ndim}, not 2"
    if node.op_type == "Gemm" and node_attr(node, "transA", 0):
        return "Gemm with transA=1"
    if len(node.input) > 2 and node.input[2]:
        bias = index.constant(node.input[2])
        if bias is None or bias.dtype != np.float32:
            return "bias is not a float32 constant"
        channels = weight.shape[node_output_channel_axis(node, weight.ndim)]
        if node.op_type == "ConvTranspose":
            channels *= int(node_attr(node, "group", 1))
        if bias.size not in (1, channels):
            return f"bias of {bias.size} elements for {channels} output channels"
    return None


def _fusable_activations(graph, index, core, config) -> dict[str, onnx.NodeProto]:
    """Producer name -> the Relu/Clip right after it that a Q can absorb."""
    outputs = {o.name for o in graph.output}
    found = {}
    if not config.absorb_activations:
        return found
    for name, node in core.items():
        out = node.output[0]
        follower = index.single_consumer(out)
        if follower is None or out in outputs or not is_onnx_domain(follower):
            continue
        if follower.op_type not in ACTIVATION_OPS or excluded(follower, config.exclude):
            continue
        if follower.op_type == "Clip" and not _zero_inside_clip(follower, index):
            continue
        found[name] = follower
    return found


def _zero_inside_clip(node: onnx.NodeProto, index: GraphIndex) -> bool:
    bounds = [node_attr(node, "min", None), node_attr(node, "max", None)]
    for slot in (1, 2):
        if len(node.input) > slot and node.input[slot]:
            value = index.constant(node.input[slot])
            if value is None or value.size != 1:
                return False
            bounds[slot - 1] = float(value.reshape(-1)[0])
    low, high = bounds
    return (low is None or low <= 0) and (high is None or high >= 0)


def _active(index, candidates, fusable) -> set[str]:
    """Candidates that run in int8: every weighted op, and each other op that reads an int8
    tensor and feeds an int8 reader (a greatest fixpoint: start from all, drop until stable).
    Others would only add Q/DQ round trips around float neighbours. A table op (see
    `OpRule.table`) needs only the int8 input: its DQ moves after it, where it is no dearer."""
    active = set(candidates)
    changed = True
    while changed:
        changed = False
        for name, node in candidates.items():
            rule = RULES[node.op_type]
            if name not in active or rule.kind == "weighted":
                continue
            if not (
                _reads_int8(node, index, active, fusable)
                and (rule.table or _feeds_int8(node, index, active, fusable))
            ):
                active.discard(node.name)
                changed = True
    return active


def _why_inactive(node: onnx.NodeProto) -> str:
    if RULES[node.op_type].table:
        return "no int8 input (its table kernel would only add a Q before it)"
    return "no int8 neighbour on one side"


def _int8_available(tensor: str, index, active, fusable) -> bool:
    producer = index.producer.get(tensor)
    if producer is None:
        return False
    if producer.op_type in ACTIVATION_OPS and producer.input:
        source = index.producer.get(producer.input[0])
        if source is not None and fusable.get(source.name) is producer:
            return source.name in active
    return producer.name in active


def _reads_int8(node, index, active, fusable) -> bool:
    rule = RULES[node.op_type]
    inputs = activation_inputs(node, rule, index)
    if rule.kind == "move":
        inputs = inputs[:1]
    return any(_int8_available(name, index, active, fusable) for name in inputs)


def _feeds_int8(node, index, active, fusable) -> bool:
    out = node.output[0]
    follower = fusable.get(node.name)
    if follower is not None:
        out = follower.output[0]
    return any(_reads_quantized(u, out, index, active) for u in index.consumers.get(out, []))


def _reads_quantized(user, tensor, index, active) -> bool:
    """Whether active node `user` reads `tensor` through a quantized input slot (an op type
    outside RULES is opaque: it reads float, whatever its name)."""
    rule = RULES.get(user.op_type) if is_onnx_domain(user) else None
    if user.name not in active or rule is None:
        return False
    if rule.kind == "move":
        return user.input[0] == tensor
    return tensor in activation_inputs(user, rule, index)


def _assign_tensors(plan, graph, index, core, active, fusable, config) -> None:
    """`core`, `active` (the moves): the planned nodes by name."""
    readers = set(core) | set(active)

    def needed(tensor: str) -> bool:
        users = index.consumers.get(tensor, [])
        return any(_reads_quantized(u, tensor, index, readers) for u in users)

    for node in graph.node:  # by identity: a node outside RULES may share a name
        if core.get(node.name) is node:
            _assign_core(plan, node, index, fusable, needed, config)
        elif active.get(node.name) is node:
            plan.nodes.append(node.name)
            plan.op_types[node.name] = node.op_type
            source = node.input[0]
            plan.roots.setdefault(source, source)
            plan.sources.setdefault(source, source)
            plan.roots[node.output[0]] = source
            plan.sources[node.output[0]] = node.output[0]


def _assign_core(plan, node, index, fusable, needed, config) -> None:
    rule = RULES[node.op_type]
    plan.nodes.append(node.name)
    plan.op_types[node.name] = node.op_type
    for name in activation_inputs(node, rule, index):
        value = index.constant(name)
        if value is not None:
            plan.constants[name] = value
        if plan.roots.get(name) is None:
            plan.roots[name] = name
            plan.sources[name] = name
    follower = fusable.get(node.name)
    out = node.output[0]
    if follower is not None and (rule.q_output == "always" or needed(follower.output[0])):
        plan.fused[follower.name] = node.name
        out = follower.output[0]
    if rule.q_output == "always" or needed(out):
        plan.roots[out] = out
        plan.sources[out] = node.output[0]
    if rule.kind == "weighted" and index.is_constant(node.input[1]):
        weight = index.constant(node.input[1])
        axis = node_output_channel_axis(node, weight.ndim) if config.per_channel else None
        if node.op_type == "ConvTranspose" and int(node_attr(node, "group", 1)) != 1:
            axis = None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        plan.weighted[node.name] = WeightedNode(
            node.name, node.op_type, node.input[0], node.input[1], bias, axis
        )
