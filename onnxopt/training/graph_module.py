"""A trainable torch view of an ONNX graph: a `torch.nn.Module` that runs the graph's nodes in
topological order through the handler table (`onnxopt.training.handlers`).

Constants that do not depend on anything trainable are computed once, when the view is built
(shape arithmetic, index unpacking of `share`'s decoders); the rest run on every call.
Trainables (`onnxopt.training.trainables`) become parameters: a float constant is one itself;
an int8 weight is a float latent rounded straight-through to its grid; an activation scale is
the graph's times exp(a trained log-factor); an int32 bias a float latent whose scale
follows the activation scale.
`constant_values()` gives every trained constant as the graph stores it (element type and
shape), which is what write-back puts into the model.

A node the table cannot run exactly raises `Unsupported` when the view is built, naming it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import torch
from torch import nn

from onnxopt.ir.graph import GraphIndex, constant_node_value, default_opset, has_subgraph_attribute
from onnxopt.training.fusion import fuse_conv_batchnorm, fuse_fake_quant
from onnxopt.training.handlers import handler_for
from onnxopt.training.nodes import NodeView, Unsupported
from onnxopt.training.ops_quant import CARRIED_INPUTS, round_ste
from onnxopt.training.trainables import Trainable, TrainPlan

MIN_SCALE = 1e-12


class GraphModule(nn.Module):
    """Runs `model`'s main graph; `forward(*inputs)` returns its outputs, then `extra` tensors."""

    def __init__(self, model: onnx.ModelProto, plan: TrainPlan | None = None) -> None:
        super().__init__()
        graph = model.graph
        self.plan = plan or TrainPlan()
        self.index = GraphIndex(graph)
        self.input_names = [v.name for v in graph.input if v.name not in self.index.initializers]
        self.output_names = [v.name for v in graph.output]
        self.extra: list[str] = []
        opset = default_opset(model)
        carried = _carried_as_float(graph)
        constants = self._constants(graph, carried)
        steps = _steps(graph, opset, _element_types(model, constants))
        self.steps = fuse_fake_quant(fuse_conv_batchnorm(steps, self.index), self.index)
        self.trainables: dict[str, Trainable] = {t.name: t for t in self.plan.trainables}
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        for position, item in enumerate(self.plan.trainables):
            key = f"p{position}"
            self._keys[item.name] = key
            start = self._initial_latent(item, constants)
            if item.kind != "log_scale":
                self.register_buffer(f"{key}_start", start, persistent=False)
                self.register_buffer(f"{key}_unit", channel_unit(start), persistent=False)
            self.params[key] = nn.Parameter(torch.zeros_like(start))
        live = self._trained_dependents(graph)
        self._constant_steps = [s for s in self.steps if s[0].node.output[0] in live["const"]]
        self._run_steps = [s for s in self.steps if s[0].node.output[0] not in live["const"]]
        self._frozen_names = self._fold_frozen(constants, live)

    # --- building -------------------------------------------------------------------------

    def _constants(self, graph: onnx.GraphProto, carried: set[str]) -> dict[str, torch.Tensor]:
        values = {}
        for tensor in graph.initializer:
            if tensor.name not in self.input_names:
                values[tensor.name] = onnx.numpy_helper.to_array(tensor)
        for node in graph.node:
            if node.op_type == "Constant":
                value = constant_node_value(node)
                if value is None:
                    raise Unsupported(f"Constant node '{node.name}' has no tensor value")
                values[node.output[0]] = value
        return {name: _to_torch(value, name in carried) for name, value in values.items()}

    def _latent(self, item: Trainable) -> torch.Tensor:
        """The trained value in float: its start plus the parameter in units of the start's
        channel RMS (see `channel_unit`); a log-factor for an activation scale."""
        key = self._keys[item.name]
        delta = self.params[key]
        if item.kind == "log_scale":
            return delta
        return getattr(self, f"{key}_start") + delta * getattr(self, f"{key}_unit")

    def _initial_latent(self, item: Trainable, constants: dict) -> torch.Tensor:
        value = constants[item.name].float()
        if item.kind == "log_scale":
            return torch.zeros_like(value)
        if item.kind == "fake_quant":
            scale, zero = self._per_channel(item, constants, value.ndim)
            return (value - zero) * scale
        if item.kind == "derived_bias":
            return value * constants[item.bias_scale].float()
        return value.clone()

    def _per_channel(self, item: Trainable, constants, rank: int):
        scale = constants[item.scale].float()
        zero = constants[item.zero_point].float() if item.zero_point else torch.zeros(())
        if scale.ndim == 1 and rank > 1:
            shape = [1] * rank
            shape[item.axis % rank] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return scale, zero

    def _trained_dependents(self, graph: onnx.GraphProto) -> dict[str, set[str]]:
        """'const': outputs of nodes computed from constants only; 'trained': those of them
        that depend on a trainable (recomputed every call)."""
        const = set(self.index.initializers) - set(self.input_names)
        const |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
        trained = set(self.trainables)
        for item in self.trainables.values():
            if item.kind == "derived_bias":
                trained.add(item.bias_scale)
        for view, _ in self.steps:
            node = view.node
            inputs = [i for i in node.input if i]
            if all(i in const for i in inputs):
                const.update(o for o in node.output if o)
                if any(i in trained for i in inputs):
                    trained.update(o for o in node.output if o)
        return {"const": const, "trained": trained}

    def _fold_frozen(self, constants: dict, live: dict) -> list[str]:
        """Run the constant-only nodes that nothing trainable feeds, once; keep as buffers
        the constants the remaining nodes read."""
        values = dict(constants)
        with torch.no_grad():
            for view, handler in self._constant_steps:
                if view.node.output[0] in live["trained"]:
                    continue
                _run(view, handler, values)
        needed = self._names_read()
        frozen = []
        for name, value in values.items():
            item = self.trainables.get(name)
            if name in needed and (item is None or item.kind == "log_scale"):
                self.register_buffer(_buffer_key(len(frozen)), value, persistent=False)
                frozen.append(name)
        self._recomputed = [s for s in self._constant_steps if s[0].node.output[0] in
                            live["trained"]]
        return frozen

    def _names_read(self) -> set[str]:
        names = set()
        for item in self.trainables.values():
            names.update(n for n in (item.scale, item.zero_point, item.activation_scale,
                                     item.weight_scale) if n)
        for view, _ in self._constant_steps + self._run_steps:
            names.update(i for i in view.node.input if i)
        names.update(self.output_names)
        return names

    def computed(self) -> set[str]:
        """The tensors a call computes, which `extra` may name (a fused step's inner tensors
        are not among them, see `fusion`)."""
        return {o for view, _ in self._run_steps for o in view.node.output if o}

    # --- running ---------------------------------------------------------------------------

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        values = self.constant_tensors()
        values.update(zip(self.input_names, inputs, strict=True))
        for view, handler in self._run_steps:
            _run(view, handler, values)
        return [values[name] for name in self.output_names + self.extra]

    def constant_tensors(self) -> dict[str, torch.Tensor]:
        """Every constant the graph reads, trained ones computed from their latents."""
        values = {name: getattr(self, _buffer_key(i)) for i, name in
                  enumerate(self._frozen_names)}
        for item in self.plan.trainables:
            latent = self._latent(item)
            if item.kind in ("direct", "codebook"):
                values[item.name] = latent
            elif item.kind == "log_scale":
                # s0 * exp(u), u = 0 at first: an untrained scale is exactly the graph's
                values[item.name] = values[item.name] * torch.exp(latent)
            elif item.kind == "fake_quant":
                scale, zero = self._per_channel(item, values, latent.ndim)
                low, high = item.grid
                values[item.name] = torch.clamp(round_ste(latent / scale) + zero, low, high)
            else:
                scale = (values[item.activation_scale] * values[item.weight_scale]).float()
                values[item.bias_scale] = scale
                values[item.name] = round_ste(latent / scale.clamp_min(MIN_SCALE))
        for view, handler in self._recomputed:
            _run(view, handler, values)
        return values

    def constant_values(self) -> dict[str, np.ndarray]:
        """The trained constants (and re-derived bias scales) as the graph stores them."""
        with torch.no_grad():
            values = self.constant_tensors()
        out = {}
        for item in self.plan.trainables:
            names = [item.name] + ([item.bias_scale] if item.kind == "derived_bias" else [])
            for name in names:
                out[name] = values[name].detach().cpu().numpy()
        return out

    def named_trainables(self) -> Iterable[tuple[Trainable, nn.Parameter]]:
        for item in self.plan.trainables:
            yield item, self.params[self._keys[item.name]]


def channel_unit(value: torch.Tensor) -> torch.Tensor:
    """The RMS of each slice along axis 0 (an output channel of a Conv/Gemm weight; the whole
    tensor for a vector), floored at a thousandth of the tensor's: a parameter trains in these
    units, so one learning rate moves every channel by the same share of its size. Folded
    BatchNorms leave channels of one layer orders of magnitude apart; an optimizer step the
    same in absolute terms would rewrite the small ones and leave the large ones alone."""
    whole = value.pow(2).mean().sqrt().clamp_min(1e-12)
    if value.ndim < 2:
        return whole.expand_as(value).clone()
    rows = value.reshape(value.shape[0], -1).pow(2).mean(dim=1).sqrt()
    unit = torch.maximum(rows, whole * 1e-3)
    return unit.reshape([-1] + [1] * (value.ndim - 1))


def _run(view: NodeView, handler, values: dict) -> None:
    inputs = [values[name] if name else None for name in view.node.input]
    outputs = handler(view, inputs)
    for name, value in zip(view.node.output, outputs, strict=False):
        if name:
            values[name] = value


def _buffer_key(position: int) -> str:
    return f"c{position}"


def _steps(graph: onnx.GraphProto, opset: int, types: dict[str, int]):
    """(node view, handler) for every node but Constant, in topological order; Unsupported
    names every op (with one node) the table cannot run."""
    steps, problems = [], {}
    for node in _topological(graph):
        if node.op_type == "Constant":
            continue
        if has_subgraph_attribute(node):
            problems.setdefault(node.op_type, f"op '{node.op_type}' (node '{node.name}') holds "
                                "a subgraph")
            continue
        view = NodeView.of(node, opset, input_types=tuple(types.get(i, 0) for i in node.input))
        try:
            steps.append((view, handler_for(view)))
        except Unsupported as exc:
            problems.setdefault(node.op_type, str(exc))
    if problems:
        raise Unsupported("; ".join(problems.values()))
    return steps


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise Unsupported(f"node '{pending[0].name}' reads a tensor nothing produces")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        pending = [n for n in pending if all(n is not r for r in ready)]
    return ordered


def _carried_as_float(graph: onnx.GraphProto) -> set[str]:
    """Names of integer tensors read by QuantizeLinear/DequantizeLinear (values and zero
    points): the view holds them as float32."""
    names = set()
    for node in graph.node:
        slots = CARRIED_INPUTS.get(node.op_type, ())
        names.update(node.input[i] for i in slots if i < len(node.input) and node.input[i])
    return names


def _element_types(model: onnx.ModelProto, constants: dict) -> dict[str, int]:
    """ONNX element types of the tensors the graph declares (inputs, outputs, value_info and
    constants): handlers of Q/DQ need the zero point's."""
    types = {}
    graph = model.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in graph.initializer:
        types[tensor.name] = tensor.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None:
                types[node.output[0]] = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    return types


def _to_torch(value: np.ndarray, carried: bool) -> torch.Tensor:
    if carried:
        return torch.from_numpy(np.array(value, dtype=np.float32))
    if value.dtype == np.uint16 or value.dtype == np.uint32:
        return torch.from_numpy(value.astype(np.int64))
    return torch.from_numpy(np.array(value))
