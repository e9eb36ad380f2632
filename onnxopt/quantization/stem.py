"""Which convs at the start of an image model stay float on cpu, from ONNX Runtime's measured
kernel costs (ORT 1.31 CPU, MobileNetV2 at 224x224, batch 1, 2 threads, AMD EPYC with AVX-512
VNNI; per-node profiles, 10th percentile of 600 runs, "cold" when other models ran in between).

A float region ends where its tensor is quantized for an int8 reader. ORT's float convs run in
its blocked NCHWc layout and its int8 convs in NHWC, so that boundary costs a ReorderOutput, a
QuantizeLinear and a uint8 Transpose: about 0.2 ns per element (78 us on MobileNetV2's
32x112x112 stem output; 128 us cold). The rules keep the image stem float and then grow its
float region by the depthwise conv right after the stem when ORT's float kernel is faster there.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, node_attr
from onnxopt.quantization.rules import ACTIVATION_OPS

STEM_MAX_PATCH = 32
STEM_MIN_SIZE = 32
DEPTHWISE_MAX_CHANNELS = 32


def image_stem(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """Why an image stem stays float, or None. Such a stem is a Conv reading a graph input of at
    least STEM_MIN_SIZE pixels a side (or dynamic sizes) with patches of at most STEM_MAX_PATCH
    values (3x3 over RGB: 27). ORT's int8 conv on CPU is an NHWC im2col GEMM whose inner size is
    the patch length, and it needs the input quantized and transposed first: for MobileNetV2's
    stem that is 365 + 68 us against 232 us for the float kernel, and the whole model runs 5-10 %
    faster with the stem float (a 32x32 CNN at batch 8: 9 %). A 7x7 ResNet stem (patch 147) is
    the other way round: its model runs 1.6x slower with that stem float. On tiny inputs (8x8
    digits) both are equally fast: such a stem stays int8."""
    if node.op_type != "Conv":
        return None
    shape = _input_shape(index.graph, node.input[0])
    weight = index.constant(node.input[1])
    if shape is None or weight is None or weight.ndim < 3:
        return None
    patch = int(np.prod(weight.shape[1:]))
    sizes = [d for d in shape[2:] if isinstance(d, int)]
    if patch > STEM_MAX_PATCH or any(d < STEM_MIN_SIZE for d in sizes):
        return None
    return (
        f"image stem (patches of {patch} values from graph input '{node.input[0]}'): ORT's "
        "float kernel is faster on cpu (option float_stem)"
    )


def stem_block(node: onnx.NodeProto, index: GraphIndex, kept: dict[str, str]) -> str | None:
    """Why a conv right after the float stem stays float too, or None. `kept` maps the nodes
    these rules kept float so far (graph order) to their kind: "stem", "depthwise".

    - A depthwise conv of at most DEPTHWISE_MAX_CHANNELS channels reading the float stem: ORT's
      uint8 depthwise kernel vectorizes over channels and is slower than the float one on few
      channels (MobileNetV2's 32 channels at 112x112: 131 us against 86 us; alone, 1.3-2x
      slower at 16-32 channels, 0.9x at 64). Kept float, it moves the boundary from its input
      to its output, of the same size (4x smaller at stride 2).
    A 1x1 projection narrowing the depthwise output (MobileNetV2's 32->16) kept float as well
    would move the boundary to a tensor half the size: about 2 % more speed, but only 93 % of
    the model's MACs left in int8 kernels, under the 95 % this pass guarantees; it stays int8.
    The tensor in between must have no other reader (through Relu/Clip), or it is quantized
    anyway."""
    if node.op_type != "Conv":
        return None
    source = _float_source(node, index, kept)
    weight = index.constant(node.input[1])
    if source is None or weight is None or weight.ndim < 3:
        return None
    group = int(node_attr(node, "group", 1))
    channels = weight.shape[0]
    if kept[source] != "stem" or not _depthwise(weight, group) or channels > DEPTHWISE_MAX_CHANNELS:
        return None
    kept[node.name] = "depthwise"
    return (
        f"depthwise conv of {channels} channels reading the float image stem "
        f"'{source}': ORT's float kernel is faster on cpu (option float_stem)"
    )


def _float_source(node: onnx.NodeProto, index: GraphIndex, kept: dict[str, str]) -> str | None:
    """The node in `kept` whose output `node` alone reads (through Relu/Clip), or None."""
    tensor = node.input[0]
    reader = node
    while True:
        if index.single_consumer(tensor) is not reader:
            return None
        producer = index.producer.get(tensor)
        if producer is None:
            return None
        if producer.name in kept:
            return producer.name
        if producer.op_type not in ACTIVATION_OPS or not producer.input:
            return None
        tensor, reader = producer.input[0], producer


def _depthwise(weight: np.ndarray, group: int) -> bool:
    return group > 1 and weight.shape[1] == 1 and weight.shape[0] == group


def _input_shape(graph: onnx.GraphProto, name: str) -> list[int | str] | None:
    """The declared dims of graph input `name` (None if it is not a graph input)."""
    for value in graph.input:
        if value.name == name:
            dims = value.type.tensor_type.shape.dim
            return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
    return None
