"""Fusions the torch view makes for training speed and memory.

Conv -> BatchNormalization (inference) runs as one convolution with the normalization folded
into its weight and bias on every call, so gradients still reach the Conv's weights and the
BatchNormalization's scale and shift (a `share` output keeps its BatchNormalizations: cleanup
did not run before it). Unfused, the normalization keeps one more activation-sized tensor
per layer for its backward pass: MobileNetV2 `share{target_ratio=6}` at batch 16 held
2.05 GB after its forward pass, 1.17 GB fused. A Conv whose output something else reads, or
that is a graph output, stays as it is; the fused Conv's own output is not computed (the
feature term does not offer it, see `GraphModule.computed`).

QuantizeLinear -> DequantizeLinear on an activation runs as one fake-quantize kernel.

In a `quant` output, every activation passes through a QuantizeLinear whose integers only its
DequantizeLinear partners read. Run as written, that is six or more passes over each
activation per call, and as many in the backward pass; torch's fused kernel
(`_fake_quantize_learnable_per_tensor_affine`) is one, with the straight-through gradient for
the input and the LSQ gradient for the scale. It rounds x * (1 / scale) + zero_point where
ONNX rounds x / scale and then adds the zero point: the two differ only for values within a
float rounding of a half-step boundary (one int8 step there, as between ONNX Runtime's own
fused kernels and its unfused nodes). Per-axis scales, 16-bit types and graph outputs are not
fused.

On the CPU that kernel is itself the bottleneck: it does not vectorize, and on int8
MobileNetV2 (batch 16, 2 threads) its forward and backward took two thirds of a training step.
Large activations therefore run `_fake_quantize_ste`, the same arithmetic as ONNX (x / scale,
then the zero point) in plain tensor ops that torch.compile fuses into one vectorized loop
each way: 1.40 -> 0.72 s per step. On other devices (CUDA), and where torch.compile cannot
build it (no C++ compiler), the torch kernel runs as before.
"""

from __future__ import annotations

import logging

import onnx
import torch

from onnxopt.ir.graph import GraphIndex
from onnxopt.training.nodes import Handler, Inputs, NodeView, Tensor
from onnxopt.training.ops_nn import batch_norm_factor, batch_norm_problem, conv
from onnxopt.training.ops_quant import RANGES, dequantize_linear, quantize_linear

log = logging.getLogger(__name__)

FUSABLE_TYPES = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
COMPILED_FROM = 1 << 18
"""Elements from which an activation runs the compiled kernel: below it the torch kernel is
fast enough, and small models (the tests' digits CNN) never pay the compile (about 10-20 s
the first time on this machine, cached on disk after)."""

Step = tuple[NodeView, Handler]


def fuse_conv_batchnorm(steps: list[Step], index: GraphIndex) -> list[Step]:
    """`steps` with each Conv that only an inference BatchNormalization reads replaced by one
    step writing the BatchNormalization's output."""
    views = {id(view.node): view for view, _ in steps}
    fused: dict[int, Step] = {}
    dropped: set[int] = set()
    for view, _ in steps:
        conv_node = _conv_before(view, index)
        if conv_node is not None:
            fused[id(conv_node)] = _conv_batchnorm_step(views[id(conv_node)], view)
            dropped.add(id(view.node))
    out = []
    for step in steps:
        if id(step[0].node) in dropped:
            continue
        out.append(fused.get(id(step[0].node), step))
    return out


def _conv_before(view: NodeView, index: GraphIndex) -> onnx.NodeProto | None:
    """The Conv whose output only this inference BatchNormalization reads, or None."""
    node = view.node
    if node.op_type != "BatchNormalization" or batch_norm_problem(view):
        return None
    producer = index.producer.get(node.input[0])
    if producer is None or producer.op_type != "Conv" or node.input[0] in index.graph_outputs:
        return None
    readers = index.consumers.get(node.input[0], [])
    return producer if len(readers) == 1 and readers[0] is node else None


def _conv_batchnorm_step(conv_view: NodeView, bn: NodeView) -> Step:
    conv_inputs = list(conv_view.node.input) + [""] * (3 - len(conv_view.node.input))
    node = onnx.helper.make_node("ConvBatchNormalization", conv_inputs + list(bn.node.input[1:5]),
                                 [bn.node.output[0]], name=conv_view.node.name)
    fused = NodeView(node, bn.opset, dict(conv_view.attrs))

    def run(_: NodeView, inputs: Inputs) -> list[Tensor]:
        x, weight, bias = inputs[:3]
        scale, shift, mean, var = inputs[3:7]
        factor = batch_norm_factor(bn, scale, var)
        weight = weight * factor.reshape([-1] + [1] * (weight.dim() - 1))
        bias = (-mean if bias is None else bias - mean) * factor + shift
        return conv(conv_view, [x, weight, bias])

    return fused, run


def fuse_fake_quant(steps: list[Step], index: GraphIndex) -> list[Step]:
    """`steps` with each activation Q -> DQ pair(s) replaced by one fused step writing the
    DequantizeLinear outputs."""
    fused_dqs: set[int] = set()
    out: list[Step] = []
    replacements: dict[int, Step] = {}
    for position, (view, _) in enumerate(steps):
        partners = _partners(view, index)
        if partners:
            replacements[position] = _fused_step(view, partners)
            fused_dqs.update(id(n) for n in partners)
    for position, step in enumerate(steps):
        if id(step[0].node) in fused_dqs:
            continue
        out.append(replacements.get(position, step))
    return out


def _partners(view: NodeView, index: GraphIndex) -> list[onnx.NodeProto]:
    node = view.node
    if node.op_type != "QuantizeLinear" or len(node.input) < 3 or view.attr("block_size", 0):
        return []
    if view.input_type(2) not in FUSABLE_TYPES or node.output[0] in index.graph_outputs:
        return []
    readers = index.consumers.get(node.output[0], [])
    same = all(r.op_type == "DequantizeLinear" and list(r.input[1:3]) == list(node.input[1:3])
               and not any(a.name == "block_size" and a.i for a in r.attribute) for r in readers)
    return readers if readers and same else []


def _fused_step(view: NodeView, partners: list[onnx.NodeProto]) -> Step:
    node = onnx.helper.make_node("FakeQuantize", list(view.node.input),
                                 [p.output[0] for p in partners], name=view.node.name)
    fused = NodeView(node, view.opset, dict(view.attrs), view.input_types)
    low, high = RANGES[view.input_type(2)]

    def run(_: NodeView, inputs: Inputs) -> list[Tensor]:
        x, scale, zero = inputs[0], inputs[1], inputs[2]
        if scale.numel() == 1 and x.dtype == torch.float32:
            y = fake_quantize(x, scale.reshape(1).float(), zero.reshape(1).float(), low, high)
        else:
            (q,) = quantize_linear(view, inputs)
            (y,) = dequantize_linear(NodeView(partners[0], view.opset), [q, scale, zero])
        return [y] * len(partners)

    return fused, run


def fake_quantize(x: Tensor, scale: Tensor, zero: Tensor, low: int, high: int) -> Tensor:
    """Per-tensor Q -> DQ of a float32 activation, straight-through for x, LSQ for scale."""
    if x.device.type == "cpu" and x.numel() >= COMPILED_FROM:
        kernel = _compiled_kernel()
        if kernel is not None:
            return kernel(x, scale, zero, low, high)
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zero, low, high, 1.0)


def _fake_quantize_ste(x: Tensor, scale: Tensor, zero: Tensor, low: int, high: int) -> Tensor:
    """ONNX's QuantizeLinear -> DequantizeLinear; the rounding passes gradients straight
    through, so d/dx is 1 inside the range and 0 outside, and d/dscale is LSQ's
    (q - zero) - x / scale inside and (q - zero) outside."""
    v = x / scale
    rounded = v + (torch.round(v) - v).detach()
    return ((rounded + zero).clamp(low, high) - zero) * scale


_KERNEL: dict[str, object] = {}


def _compiled_kernel():
    """`_fake_quantize_ste` compiled once per process for any shape, or None when
    torch.compile fails on this machine (tried once, forward and backward, on a probe)."""
    if "kernel" not in _KERNEL:
        _KERNEL["kernel"] = None
        try:
            kernel = torch.compile(_fake_quantize_ste, dynamic=True)
            # the first call may come from a scoring pass under no_grad
            with torch.enable_grad():
                probe = torch.linspace(-2, 2, 120).reshape(2, 3, 4, 5).requires_grad_()
                scale = torch.tensor([0.05], requires_grad=True)
                kernel(probe, scale, torch.tensor([3.0]), -128, 127).sum().backward()
            _KERNEL["kernel"] = kernel
        except Exception as exc:  # any compiler failure: torch's kernel runs instead
            log.info("distill: torch.compile is unavailable here (%s); the fake-quantize "
                     "steps run torch's own kernel", str(exc).splitlines()[0][:200])
    return _KERNEL["kernel"]
