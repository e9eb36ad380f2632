"""Every torch handler against ONNX Runtime on one-node models with small seeded inputs.

Each case builds one node (onnx.helper), runs it in ONNX Runtime (CPU) and through its handler
in torch on the same float32 inputs, and compares: floats within 1e-5 relative (plus 1e-6 of
the output's largest magnitude: fp32 sums are computed in different orders), integers and
booleans exactly. Attributes are covered per combination that changes the computation
(auto_pad modes, groups, attributes at the opset before and after they moved to inputs).
Gradients are checked to flow through Conv, Gemm, MatMul, Q/DQ (straight-through) and through
the codebook decoder's GatherElements to its centroids.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from onnxopt.ir.codebook import Codebook, emit_decoder
from onnxopt.ir.graph import Names
from onnxopt.training.handlers import HANDLERS, handler_for
from onnxopt.training.nodes import NodeView, Unsupported
from onnxopt.training.ops_quant import CARRIED_INPUTS, CARRIED_OUTPUTS

IR_VERSION = 8
"""onnx 1.23's make_model writes IR 14; ONNX Runtime runs IR 8 with any opset it knows."""


def node_of(op: str, inputs: list, outputs: int, attrs: dict) -> onnx.NodeProto:
    names = ["" if value is None else f"in{i}" for i, value in enumerate(inputs)]
    return helper.make_node(op, names, [f"out{i}" for i in range(outputs)], name="n", **attrs)


def one_node_model(node: onnx.NodeProto, inputs: list, opset: int) -> onnx.ModelProto:
    declared = [
        helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape
        )
        for name, value in zip(node.input, inputs, strict=True)
        if value is not None
    ]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = helper.make_graph([node], "one_node", declared, outputs)
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def run_ort(node: onnx.NodeProto, inputs: list, opset: int) -> list[np.ndarray]:
    model = one_node_model(node, inputs, opset)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {n: v for n, v in zip(node.input, inputs, strict=True) if v is not None}
    return session.run(None, feeds)


def torch_inputs(op: str, inputs: list, dtype: torch.dtype | None = None) -> list:
    """numpy inputs as the graph module hands them: quantized integers carried as float32,
    float inputs in `dtype` when given."""
    carried = CARRIED_INPUTS.get(op, ())
    result = []
    for i, value in enumerate(inputs):
        if value is None:
            result.append(None)
            continue
        tensor = torch.from_numpy(np.array(value))
        if i in carried:
            tensor = tensor.to(torch.float32)
        elif dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        result.append(tensor)
    return result


def _types(inputs: list) -> list[int]:
    return [
        0 if v is None else helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype) for v in inputs
    ]


def run_torch(
    node: onnx.NodeProto,
    inputs: list,
    opset: int,
    input_types: list[int] | None = None,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    view = NodeView.of(
        node, opset, input_types=_types(inputs) if input_types is None else input_types
    )
    handler = handler_for(view)
    return handler(view, torch_inputs(node.op_type, inputs, dtype))


def as_expected(op: str, index: int, got: torch.Tensor, want: np.ndarray) -> np.ndarray:
    """A handler output as numpy, carried quantized outputs back in their integer type."""
    value = got.detach().cpu()
    if index in CARRIED_OUTPUTS.get(op, ()) and not np.issubdtype(want.dtype, np.floating):
        return value.numpy().astype(want.dtype)
    return value.numpy()


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    if np.issubdtype(want.dtype, np.floating):
        assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype}"
        finite = np.abs(want[np.isfinite(want)])
        scale = float(finite.max()) if finite.size else 1.0
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * max(scale, 1.0))
    else:
        assert got.dtype == want.dtype, f"dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want)


RNG = np.random.default_rng(19)


def f32(*shape: int, low: float = -2.0, high: float = 2.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def case(op: str, inputs: list, attrs: dict | None = None, opset: int = 17, **options):
    """One parametrized case; options: outputs (count), rtol, name (id suffix)."""
    name = options.pop("name", "")
    label = f"{op}-{opset}" + (f"-{name}" if name else "")
    return pytest.param(op, inputs, attrs or {}, opset, options, id=label)


def _conv_cases() -> list:
    x, w = f32(2, 4, 7, 8), f32(6, 4, 3, 3)
    cases = [
        case("Conv", [x, w, f32(6)], {"pads": [1, 1, 1, 1]}, name="pads"),
        case("Conv", [x, w], {"pads": [0, 1, 2, 1]}, name="asymmetric"),
        case("Conv", [x, w], {"strides": [2, 2], "dilations": [2, 1]}, name="stride-dilation"),
        case("Conv", [x, f32(6, 2, 3, 3)], {"group": 2}, name="group"),
        case("Conv", [x, f32(4, 1, 3, 3), f32(4)], {"group": 4}, name="depthwise"),
        case("Conv", [f32(2, 3, 11), f32(5, 3, 4)], {"pads": [2, 1]}, name="1d"),
        case("Conv", [f32(1, 2, 5, 6, 4), f32(3, 2, 3, 2, 3)], {"strides": [1, 2, 1]}, name="3d"),
    ]
    for auto_pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs = {"auto_pad": auto_pad, "strides": [2, 3]}
        cases.append(case("Conv", [x, f32(6, 4, 4, 3)], attrs, name=auto_pad))
    return cases


def _conv_transpose_cases() -> list:
    x, w = f32(2, 4, 5, 6), f32(4, 3, 3, 3)
    attrs = [
        ("plain", {}),
        ("stride-outpad", {"strides": [2, 2], "output_padding": [1, 0]}),
        ("asymmetric", {"strides": [2, 1], "pads": [1, 0, 0, 2]}),
        ("dilations", {"dilations": [2, 1], "pads": [1, 1, 1, 1]}),
        ("output_shape", {"strides": [2, 2], "output_shape": [12, 13]}),
        ("SAME_UPPER", {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("SAME_LOWER", {"strides": [2, 3], "auto_pad": "SAME_LOWER"}),
        ("VALID", {"strides": [2, 2], "auto_pad": "VALID"}),
    ]
    cases = [case("ConvTranspose", [x, w, f32(3)], a, name=n) for n, a in attrs]
    cases.append(case("ConvTranspose", [x, f32(4, 2, 3, 2)], {"group": 2}, name="group"))
    cases.append(case("ConvTranspose", [f32(1, 3, 6), f32(3, 2, 4)], {"strides": [3]}, name="1d"))
    cases.append(case("ConvTranspose", [f32(1, 2, 3, 4, 3), f32(2, 2, 2, 3, 2)], name="3d"))
    return cases


def _gemm_cases() -> list:
    a, b = f32(3, 4), f32(4, 5)
    return [
        case("Gemm", [a, b, f32(5)], name="bias-row"),
        case("Gemm", [a, b, f32(3, 1)], {"alpha": 0.5, "beta": 2.0}, name="alpha-beta"),
        case("Gemm", [a, b, f32(1)], name="scalar-c"),
        case("Gemm", [a.T.copy(), b.T.copy(), f32(3, 5)], {"transA": 1, "transB": 1}, name="trans"),
        case("Gemm", [a, b], opset=13, name="no-c"),
        case("MatMul", [a, b], name="2d"),
        case("MatMul", [f32(2, 3, 4), b], name="batched"),
        case("MatMul", [f32(4), b], name="vector"),
        case("MatMul", [f32(2, 1, 3, 4), f32(3, 4, 2)], name="broadcast"),
    ]


def _pool_cases() -> list:
    x = f32(2, 3, 7, 8)
    cases = []
    for op in ("MaxPool", "AveragePool", "LpPool"):
        base = {"kernel_shape": [3, 3]}
        variants = [
            ("strides", {"strides": [2, 2]}),
            ("pads", {"pads": [1, 2, 2, 1], "strides": [2, 1]}),
            ("ceil", {"strides": [2, 2], "ceil_mode": 1, "pads": [1, 0, 1, 1]}),
            ("SAME_UPPER", {"auto_pad": "SAME_UPPER", "strides": [2, 3]}),
            ("SAME_LOWER", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
            ("VALID", {"auto_pad": "VALID", "strides": [2, 2]}),
        ]
        if op != "LpPool":
            variants.append(("dilations", {"dilations": [2, 1], "pads": [2, 1, 2, 1]}))
        for name, attrs in variants:
            opset = 19 if op == "AveragePool" else 18
            cases.append(case(op, [x], {**base, **attrs}, opset=opset, name=name))
    cases += [
        case("MaxPool", [f32(2, 3, 9)], {"kernel_shape": [3], "pads": [2, 2]}, name="1d"),
        case("MaxPool", [f32(1, 2, 5, 6, 4)], {"kernel_shape": [2, 3, 2]}, name="3d"),
        case("MaxPool", [(x * 60).astype(np.int8)], {"kernel_shape": [2, 2]}, name="int8"),
        case(
            "AveragePool",
            [x],
            {"kernel_shape": [3, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
            name="include-pad",
        ),
        case(
            "AveragePool",
            [x],
            {
                "kernel_shape": [3, 3],
                "pads": [1, 1, 1, 1],
                "strides": [2, 2],
                "ceil_mode": 1,
                "count_include_pad": 1,
            },
            name="ceil-include",
        ),
        case("AveragePool", [f32(2, 3, 9)], {"kernel_shape": [4], "pads": [1, 2]}, name="1d"),
        case("AveragePool", [f32(1, 2, 5, 6, 4)], {"kernel_shape": [2, 3, 2]}, name="3d"),
        case("GlobalAveragePool", [x]),
        case("GlobalMaxPool", [x]),
        case("GlobalLpPool", [x], {"p": 3}),
    ]
    return cases


def _norm_cases() -> list:
    x = f32(2, 6, 4, 5)
    bn = [f32(6), f32(6), f32(6), f32(6, low=0.1, high=2.0)]
    return [
        case("BatchNormalization", [x, *bn], {"epsilon": 1e-3}, opset=9),
        case("BatchNormalization", [x, *bn], opset=15),
        case("BatchNormalization", [f32(3, 6), *bn], opset=15, name="2d"),
        case("InstanceNormalization", [x, f32(6), f32(6)], {"epsilon": 1e-4}),
        case("LayerNormalization", [x, f32(5), f32(5)]),
        case("LayerNormalization", [x, f32(4, 5)], {"axis": 2}, outputs=3, name="stats"),
        case("LayerNormalization", [x, f32(6, 4, 5), f32(6, 4, 5)], {"axis": -3}, name="axis"),
        case("GroupNormalization", [x, f32(6), f32(6)], {"num_groups": 3}, opset=21),
        case(
            "GroupNormalization", [x, f32(2), f32(2)], {"num_groups": 2}, opset=18, name="per-group"
        ),
        case("LRN", [x], {"size": 3, "alpha": 1e-2, "beta": 0.5}),
        case("LRN", [x], {"size": 5, "bias": 2.0}, name="size5"),
    ]


def _unary_cases() -> list:
    x = f32(3, 4)
    positive, unit = f32(3, 4, low=0.1, high=3.0), f32(3, 4, low=-0.9, high=0.9)
    domains = {
        "Sqrt": positive,
        "Log": positive,
        "Reciprocal": positive,
        "Acosh": positive + 1.0,
        "Asin": unit,
        "Acos": unit,
        "Atanh": unit,
    }
    ops = [
        "Abs",
        "Neg",
        "Sqrt",
        "Exp",
        "Log",
        "Reciprocal",
        "Floor",
        "Ceil",
        "Sign",
        "Erf",
        "Sin",
        "Cos",
        "Tan",
        "Asin",
        "Acos",
        "Atan",
        "Sinh",
        "Cosh",
        "Asinh",
        "Acosh",
        "Atanh",
        "Relu",
        "Sigmoid",
        "Tanh",
        "Softplus",
        "Softsign",
        "Mish",
        "HardSwish",
        "Identity",
    ]
    cases = [case(op, [domains.get(op, x)], opset=18) for op in ops]
    halves = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, 3.7], dtype=np.float32)
    with_nan = np.array([1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    cases += [
        case("Round", [halves], name="half-even"),
        case("Relu", [np.array([-3, 4, 0, 7], dtype=np.int8)], opset=14, name="int8"),
        case("Abs", [np.array([-3, 4], dtype=np.int32)], name="int32"),
        case("IsNaN", [with_nan]),
        case("IsInf", [with_nan]),
        case("IsInf", [with_nan], {"detect_positive": 0}, name="negative"),
        case("Not", [x > 0]),
        case("BitwiseNot", [np.array([0, 5, 255], dtype=np.uint8)], opset=18),
    ]
    return cases


def _activation_cases() -> list:
    x = f32(3, 5, low=-4.0, high=4.0)
    return [
        case("LeakyRelu", [x], {"alpha": 0.2}),
        case("PRelu", [x, f32(5)]),
        case("PRelu", [f32(2, 3, 4), f32(3, 1)], name="channel"),
        case("Elu", [x], {"alpha": 0.7}),
        case("Selu", [x]),
        case("Celu", [x], {"alpha": 1.5}),
        case("ThresholdedRelu", [x], {"alpha": 0.5}),
        case("HardSigmoid", [x], {"alpha": 0.3, "beta": 0.4}),
        case("Shrink", [x], {"bias": 0.5, "lambd": 1.0}),
        case("Gelu", [x], opset=20),
        case("Gelu", [x], {"approximate": "tanh"}, opset=20, name="tanh"),
        case("Clip", [x], {"min": -1.0, "max": 2.0}, opset=6, name="attributes"),
        case(
            "Clip",
            [x, np.array(-0.5, np.float32), np.array(1.5, np.float32)],
            opset=13,
            name="inputs",
        ),
        case("Clip", [x, None, np.array(1.0, np.float32)], opset=13, name="max-only"),
        case(
            "Clip",
            [x, np.array(2.0, np.float32), np.array(1.0, np.float32)],
            opset=13,
            name="min-above-max",
        ),
        case(
            "Clip",
            [np.arange(-5, 5, dtype=np.int32), np.array(-2, np.int32), np.array(3, np.int32)],
            opset=13,
            name="int32",
        ),
    ]


def _binary_cases() -> list:
    a, b = f32(2, 3, 4), f32(3, 1)
    ints_a = np.array([[7, -7, 9, -9], [5, 6, -1, 0]], dtype=np.int32)
    ints_b = np.array([2, 2, -4, 4], dtype=np.int32)
    cases = [case(op, [a, b]) for op in ("Add", "Sub", "Mul", "Div")]
    cases += [
        case("Div", [ints_a, ints_b], name="int-truncates"),
        case(
            "Add",
            [np.array([200, 100], np.uint8), np.array([100, 1], np.uint8)],
            opset=14,
            name="uint8-wraps",
        ),
        case("Mul", [ints_a, ints_b], name="int32"),
        case("Pow", [f32(3, 4, low=0.1, high=2.0), f32(4)]),
        case("Pow", [a, np.array(2, dtype=np.int64)], opset=15, name="int-exponent"),
        case("Mod", [ints_a, ints_b], name="int"),
        case("Mod", [a, b], {"fmod": 1}, name="fmod"),
        case("Max", [a, b, f32(4)]),
        case("Min", [a, b, f32(4)]),
        case("Sum", [a, b, f32(4)]),
        case("Mean", [a, b, f32(4)]),
        case("Max", [a], name="single"),
        case(
            "Max",
            [np.array([1, 9], np.uint32), np.array([4, 2], np.uint32)],
            opset=13,
            name="uint32",
        ),
        case("BitwiseAnd", [np.array([12, 10], np.uint8), np.array([10, 6], np.uint8)], opset=18),
        case("BitwiseOr", [np.array([12, 10], np.int32), np.array([10, 6], np.int32)], opset=18),
        case("BitwiseXor", [np.array([12, 10], np.int64), np.array([10, 6], np.int64)], opset=18),
    ]
    c = a > 0
    for op in ("Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"):
        cases.append(case(op, [np.round(a), np.round(b)], opset=16))
    cases += [
        case("Equal", [ints_a, ints_b], name="int"),
        case("And", [c, b > 0]),
        case("Or", [c, b > 0]),
        case("Xor", [c, b > 0]),
        case("Where", [c, a, b]),
        case("Where", [c[0, :2], ints_a[:, :4].astype(np.int64), i64(-1)], name="int"),
    ]
    return cases


def _misc_cases() -> list:
    x = f32(2, 3, 4, low=-300.0, high=300.0)
    cases = [
        case("Cast", [x], {"to": TensorProto.INT32}, name="to-int32"),
        case("Cast", [x], {"to": TensorProto.INT8}, name="to-int8"),
        case("Cast", [x], {"to": TensorProto.DOUBLE}, name="to-double"),
        case("Cast", [x], {"to": TensorProto.FLOAT16}, name="to-half"),
        case("Cast", [x], {"to": TensorProto.BOOL}, name="to-bool"),
        case("Cast", [x > 0], {"to": TensorProto.FLOAT}, name="from-bool"),
        case("Cast", [np.array([0, 7, 255], np.uint8)], {"to": TensorProto.INT32}, name="uint8"),
        case("CastLike", [x, np.array([1], np.int64)]),
        case("Dropout", [x], opset=12),
        case("Dropout", [x, np.array(0.3, np.float32)], opset=13, outputs=2, name="mask"),
        case("Dropout", [x], {"ratio": 0.2}, opset=7, name="attribute"),
        case("Einsum", [f32(2, 3, 4), f32(2, 4, 5)], {"equation": "bij,bjk->bik"}, opset=12),
        case("Einsum", [f32(3, 3)], {"equation": "ii"}, opset=12, name="trace"),
        case("CumSum", [x, np.array(1, np.int64)], opset=14),
        case(
            "CumSum",
            [x, np.array(-1, np.int32)],
            {"exclusive": 1, "reverse": 1},
            opset=14,
            name="both",
        ),
    ]
    return cases


def _reduce_cases() -> list:
    x = f32(3, 4, 5, low=0.1, high=2.0)
    ops = [
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceLogSum",
        "ReduceLogSumExp",
    ]
    cases = []
    for op in ops:
        moved = 13 if op == "ReduceSum" else 18
        cases += [
            case(op, [x], {"axes": [0, -1]}, opset=moved - 2, name="attribute"),
            case(op, [x], {"axes": [1], "keepdims": 0}, opset=moved - 1, name="keepdims0"),
            case(op, [x], opset=moved - 1, name="all"),
            case(op, [x, i64(0, 2)], opset=moved, name="input"),
            case(op, [x, i64(1)], {"keepdims": 0}, opset=moved, name="input-keepdims0"),
            case(op, [x], {"noop_with_empty_axes": 1}, opset=moved, name="noop"),
        ]
    ints = np.array([[3, 1, 2], [5, 9, 4]], dtype=np.int32)
    cases += [
        case("ReduceMax", [ints, i64(1)], opset=18, name="int32"),
        case("ReduceSum", [ints, i64(0)], opset=13, name="int32"),
        case("ReduceSum", [np.zeros((2, 0, 3), np.float32), i64(1)], opset=13, name="empty"),
    ]
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        y = f32(2, 3, 4)
        cases += [
            case(op, [y], opset=11, name="coerced-default"),
            case(op, [y], {"axis": 2}, opset=11, name="coerced-axis2"),
            case(op, [y], opset=13, name="default"),
            case(op, [y], {"axis": 1}, opset=13, name="axis1"),
        ]
    ties = np.array([[1, 3, 3, 0], [2, 2, 1, 2]], dtype=np.float32)
    for op in ("ArgMax", "ArgMin"):
        cases += [
            case(op, [x], {"axis": 1}),
            case(op, [ties], {"axis": 1, "keepdims": 0}, name="ties"),
            case(op, [ties], {"axis": -1, "select_last_index": 1}, opset=12, name="last"),
        ]
    return cases


INT64_MAX = np.iinfo(np.int64).max


def _shape_cases() -> list:
    x = f32(2, 3, 4, 5)
    return [
        case("Shape", [x]),
        case("Shape", [x], {"start": 1, "end": -1}, opset=15, name="start-end"),
        case("Size", [x]),
        case("Reshape", [x, i64(0, -1, 5)], name="zero-copies"),
        case("Reshape", [x, i64(1, 0, -1)], {"allowzero": 0}, opset=14, name="zero-middle"),
        case(
            "Reshape",
            [np.zeros((0, 4), np.float32), i64(0, 2, 2)],
            {"allowzero": 1},
            opset=14,
            name="allowzero",
        ),
        case("Flatten", [x]),
        case("Flatten", [x], {"axis": 0}, name="axis0"),
        case("Flatten", [x], {"axis": -2}, opset=13, name="negative"),
        case("Concat", [x, f32(2, 1, 4, 5), f32(2, 2, 4, 5)], {"axis": 1}),
        case("Concat", [x, x], {"axis": -1}, name="negative"),
        case("Split", [x], {"axis": 1, "split": [1, 2]}, opset=11, outputs=2, name="attribute"),
        case("Split", [x, i64(2, 3)], {"axis": -1}, opset=13, outputs=2, name="input"),
        case("Split", [x], {"axis": 2}, opset=13, outputs=2, name="equal"),
        case("Split", [x], {"axis": 3, "num_outputs": 2}, opset=18, outputs=2, name="uneven"),
        case(
            "Slice",
            [x],
            {"starts": [1, -3], "ends": [3, 100], "axes": [1, 3]},
            opset=9,
            name="attributes",
        ),
        case("Slice", [x, i64(0, 1), i64(2, -1)], opset=13, name="inputs"),
        case(
            "Slice",
            [x, i64(-1, 4), i64(-INT64_MAX, 0), i64(1, 3), i64(-1, -2)],
            opset=13,
            name="negative-steps",
        ),
        case("Slice", [x, i64(1), i64(INT64_MAX), i64(-1), i64(2)], opset=13, name="int64-max"),
        case("Slice", [x, i64(3), i64(1), i64(2)], opset=13, name="empty"),
        case("Transpose", [x]),
        case("Transpose", [x], {"perm": [0, 2, 3, 1]}, name="perm"),
        case("Squeeze", [f32(1, 3, 1, 2)], {"axes": [0, -2]}, opset=11, name="attribute"),
        case("Squeeze", [f32(1, 3, 1, 2), i64(2)], opset=13, name="input"),
        case("Squeeze", [f32(1, 3, 1, 2)], opset=13, name="all"),
        case("Unsqueeze", [f32(3, 2)], {"axes": [0, 3]}, opset=11, name="attribute"),
        case("Unsqueeze", [f32(3, 2), i64(-1, 1)], opset=13, name="input"),
        case("Expand", [f32(3, 1), i64(2, 1, 4)]),
        case("Expand", [f32(2, 3), i64(1)], name="smaller"),
        case("Tile", [f32(2, 3), i64(2, 3)]),
        case("DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2}),
        case("DepthToSpace", [f32(1, 8, 2, 3)], {"blocksize": 2, "mode": "CRD"}, name="crd"),
        case("SpaceToDepth", [f32(1, 2, 4, 6)], {"blocksize": 2}),
    ]


def _pad_cases() -> list:
    x = f32(2, 3, 4, 5)
    cases = []
    for mode in ("constant", "reflect", "edge"):
        pads = [0, 1, 2, 1, 0, 0, 1, 3]
        cases.append(case("Pad", [x], {"mode": mode, "pads": pads}, opset=10, name=mode))
        cases.append(case("Pad", [x, i64(*pads)], {"mode": mode}, opset=13, name=f"{mode}-in"))
    cases += [
        case("Pad", [x], {"pads": [0, 0, 1, 1, 0, 0, 1, 1], "value": 1.5}, opset=2, name="value"),
        case(
            "Pad",
            [x, i64(1, 0, 0, 2, 0, 0, 0, 1), np.array(-2.0, np.float32)],
            opset=13,
            name="constant-value",
        ),
        case("Pad", [x, i64(0, 0, 0, -1, 0, 0, -2, 2)], opset=13, name="negative"),
        case(
            "Pad",
            [x, i64(2, 1, 1, 3), None, i64(1, -1)],
            {"mode": "reflect"},
            opset=18,
            name="axes",
        ),
        case("Pad", [x, i64(0, 0, 3, 1, 0, 0, 2, 6)], {"mode": "wrap"}, opset=19, name="wrap"),
        case(
            "Pad",
            [np.arange(6, dtype=np.int32).reshape(2, 3), i64(1, 1, 1, 1)],
            {"mode": "edge"},
            opset=13,
            name="int32",
        ),
    ]
    return cases


def _index_cases() -> list:
    x = f32(4, 5, 3)
    return [
        case("Gather", [x, i64(0, -1, 2)]),
        case("Gather", [x, np.array([[1, -2], [0, 4]], np.int32)], {"axis": 1}, name="2d-int32"),
        case("Gather", [x, np.array(-1, np.int64)], {"axis": 2}, name="scalar"),
        case("GatherElements", [x, RNG.integers(-3, 3, (4, 2, 3))], {"axis": 2}),
        case(
            "GatherElements", [f32(3, 4), RNG.integers(0, 3, (2, 4)).astype(np.int32)], name="int32"
        ),
        case("GatherND", [x, np.array([[0, 1], [3, -1]], np.int64)]),
        case("GatherND", [x, np.array([[1], [-4]], np.int64)], {"batch_dims": 0}, name="rows"),
        case(
            "GatherND",
            [f32(2, 3, 4), np.array([[1, 2], [0, 3]], np.int64)],
            {"batch_dims": 1},
            opset=13,
            name="batch",
        ),
        case(
            "ScatterElements",
            [x, RNG.integers(-3, 3, (2, 5, 3)), f32(2, 5, 3)],
            {"axis": 0},
            opset=13,
        ),
        case(
            "ScatterElements",
            [x, RNG.integers(0, 3, (4, 5, 2)), f32(4, 5, 2)],
            {"axis": -1, "reduction": "add"},
            opset=16,
            name="add",
        ),
        case(
            "ScatterElements",
            [x, RNG.integers(0, 3, (4, 5, 2)), f32(4, 5, 2)],
            {"axis": 2, "reduction": "max"},
            opset=18,
            name="max",
        ),
        case("Scatter", [x, np.array([[[1], [0]]], np.int64), f32(1, 2, 1)], {"axis": 1}, opset=10),
        case("ScatterND", [x, np.array([[0, 1], [3, -1]], np.int64), f32(2, 3)], opset=13),
        case(
            "ScatterND",
            [x, np.array([[1], [1], [2]], np.int64), f32(3, 5, 3)],
            {"reduction": "mul"},
            opset=16,
            name="mul",
        ),
        case(
            "ScatterND",
            [x, np.array([[0, 1, 2], [0, 1, 2]], np.int64), f32(2)],
            {"reduction": "min"},
            opset=18,
            name="min",
        ),
        case("TopK", [x, i64(2)], outputs=2),
        case("TopK", [x, i64(3)], {"axis": 1, "largest": 0}, outputs=2, name="smallest"),
        case("TopK", [np.array([[1, 3, 3, 2, 3]], np.float32), i64(3)], outputs=2, name="ties"),
        case("NonZero", [np.array([[1, 0, 2], [0, 0, 3]], np.float32)], opset=13),
        case(
            "OneHot",
            [
                np.array([0, 2, -1, 5], np.int64),
                np.array(4, np.int64),
                np.array([0, 1], np.float32),
            ],
            opset=11,
        ),
        case(
            "OneHot",
            [np.array([[1, 0]], np.int64), np.array([3], np.int64), np.array([-1, 5], np.float32)],
            {"axis": 0},
            opset=11,
            name="axis0",
        ),
        case("Trilu", [f32(3, 4)], opset=14),
        case("Trilu", [f32(2, 3, 4), np.array(-1, np.int64)], {"upper": 0}, opset=14, name="k"),
        case("ConstantOfShape", [i64(2, 3)], opset=9),
        case(
            "ConstantOfShape",
            [i64(2)],
            {"value": helper.make_tensor("v", TensorProto.INT32, [1], [7])},
            opset=9,
            name="int32",
        ),
        case(
            "Range",
            [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)],
            opset=11,
        ),
        case(
            "Range",
            [np.array(0.5, np.float32), np.array(-2, np.float32), np.array(-0.75, np.float32)],
            opset=11,
            name="float",
        ),
        case(
            "Constant",
            [],
            {"value": helper.make_tensor("v", TensorProto.FLOAT, [2], [1, 2])},
            opset=13,
        ),
        case("Constant", [], {"value_floats": [1.5, 2.5]}, opset=13, name="floats"),
        case("Constant", [], {"value_int": 4}, opset=13, name="int"),
    ]


def _resize_cases() -> list:
    x = f32(1, 2, 4, 5)
    up, down = np.array([1, 1, 2, 1.5], np.float32), np.array([1, 1, 0.6, 0.5], np.float32)
    sizes = i64(1, 2, 7, 3)
    empty = np.array([], np.float32)
    cases = []
    for mode in ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel"):
        for near in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
            attrs = {"coordinate_transformation_mode": mode, "nearest_mode": near}
            cases.append(case("Resize", [x, empty, up], attrs, opset=13, name=f"{mode}-{near}"))
            cases.append(
                case("Resize", [x, None, None, sizes], attrs, opset=13, name=f"{mode}-{near}-sizes")
            )
        for interpolation in ("linear", "cubic"):
            attrs = {"coordinate_transformation_mode": mode, "mode": interpolation}
            cases += [
                case("Resize", [x, empty, up], attrs, opset=13, name=f"{mode}-{interpolation}"),
                case(
                    "Resize", [x, empty, down], attrs, opset=13, name=f"{mode}-{interpolation}-down"
                ),
                case(
                    "Resize",
                    [x, None, None, sizes],
                    attrs,
                    opset=13,
                    name=f"{mode}-{interpolation}-sizes",
                ),
            ]
    cubic = {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}
    crop = {
        "coordinate_transformation_mode": "tf_crop_and_resize",
        "mode": "linear",
        "extrapolation_value": 3.0,
    }
    roi = np.array([0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3], np.float32)
    cases += [
        case("Resize", [x, empty, up], cubic, opset=13, name="cubic-exclude"),
        case("Resize", [x, roi, None, sizes], crop, opset=13, name="crop-and-resize"),
        case("Resize", [x, None, None, i64(6, 4)], {"axes": [3, 2]}, opset=18, name="axes"),
        case(
            "Resize",
            [x, None, None, i64(8, 8)],
            {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"},
            opset=18,
            name="not-larger",
        ),
        case("Resize", [x, empty, up], {"mode": "linear"}, opset=11, name="opset11"),
        case("Resize", [x, up], opset=10, name="opset10-nearest"),
        case("Resize", [x, down], opset=10, name="opset10-down"),
        case("Resize", [x, up], {"mode": "linear"}, opset=10, name="opset10-linear"),
        case("Resize", [(x * 50).astype(np.uint8), empty, up], opset=13, name="uint8"),
        case("Upsample", [x, np.array([1, 1, 2, 3], np.float32)], opset=9),
        case("Upsample", [x, up], {"mode": "linear"}, opset=9, name="linear"),
        case("Upsample", [x], {"scales": [1.0, 1.0, 2.0, 2.0]}, opset=7, name="attribute"),
    ]
    return cases


def _quant_cases() -> list:
    x = f32(2, 3, 4, low=-3.0, high=3.0)
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 300.0, -300.0], np.float32)
    scale, axis_scale = np.array(0.02, np.float32), f32(3, low=0.01, high=0.05)
    u8, i8 = np.array(128, np.uint8), np.array(-3, np.int8)
    q_u8 = RNG.integers(0, 256, (2, 3, 4)).astype(np.uint8)
    q_i8 = RNG.integers(-128, 128, (2, 3, 4)).astype(np.int8)
    return [
        case("QuantizeLinear", [x, scale, u8], opset=10, name="uint8"),
        case("QuantizeLinear", [x, scale, i8], opset=13, name="int8"),
        case("QuantizeLinear", [x, scale], opset=13, name="no-zero-point"),
        case(
            "QuantizeLinear",
            [ties, np.array(1.0, np.float32), np.array(0, np.int8)],
            opset=13,
            name="half-even",
        ),
        case(
            "QuantizeLinear",
            [x, axis_scale, RNG.integers(-5, 5, 3).astype(np.int8)],
            {"axis": 1},
            opset=13,
            name="per-axis",
        ),
        case(
            "QuantizeLinear",
            [x, f32(2, low=0.01, high=0.05), np.zeros(2, np.uint8)],
            {"axis": 0},
            opset=19,
            name="per-axis0",
        ),
        case("DequantizeLinear", [q_u8, scale, u8], opset=10, name="uint8"),
        case(
            "DequantizeLinear",
            [q_i8, axis_scale, RNG.integers(-5, 5, 3).astype(np.int8)],
            {"axis": 1},
            opset=13,
            name="per-axis",
        ),
        case(
            "DequantizeLinear",
            [RNG.integers(-(10**6), 10**6, 5).astype(np.int32), np.array(1e-3, np.float32)],
            opset=13,
            name="int32",
        ),
        case("DynamicQuantizeLinear", [x], opset=11, outputs=3),
        case("MatMulInteger", [q_u8, q_i8[0].T.copy()], opset=10, name="no-zero-points"),
        case(
            "MatMulInteger",
            [q_u8, RNG.integers(-127, 128, (4, 5)).astype(np.int8), u8,
             RNG.integers(-3, 4, 5).astype(np.int8)],
            opset=10,
            name="per-column",
        ),
        case(
            "MatMulInteger",
            [RNG.integers(0, 256, (3, 300)).astype(np.uint8),
             RNG.integers(-127, 128, (300, 2)).astype(np.int8), u8, np.array(0, np.int8)],
            opset=10,
            name="long-sums",
        ),
        case(
            "BitShift",
            [q_u8, np.array([[[1]], [[7]]], np.uint8)],
            {"direction": "LEFT"},
            opset=11,
            name="left",
        ),
        case(
            "BitShift",
            [q_u8, np.array(3, np.uint8)],
            {"direction": "RIGHT"},
            opset=11,
            name="right",
        ),
        case(
            "BitShift",
            [q_u8.astype(np.uint32) * 1000, np.array(20, np.uint32)],
            {"direction": "LEFT"},
            opset=11,
            name="uint32",
        ),
    ]


def test_cases_cover_the_table() -> None:
    covered = {p.values[0] for p in CASES}
    assert not set(HANDLERS) - covered, sorted(set(HANDLERS) - covered)


CASES = (
    _conv_cases()
    + _conv_transpose_cases()
    + _gemm_cases()
    + _pool_cases()
    + _norm_cases()
    + _unary_cases()
    + _activation_cases()
    + _binary_cases()
    + _misc_cases()
    + _reduce_cases()
    + _shape_cases()
    + _pad_cases()
    + _index_cases()
    + _resize_cases()
    + _quant_cases()
)


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "options"), CASES)
def test_matches_onnxruntime(op: str, inputs: list, attrs: dict, opset: int, options: dict):
    node = node_of(op, inputs, options.get("outputs", 1), attrs)
    want = run_ort(node, inputs, opset)
    got = run_torch(node, inputs, opset)
    assert len(got) >= len(want)
    for index, (value, expected) in enumerate(zip(got, want, strict=False)):
        value = as_expected(op, index, value, expected)
        assert_close(value, expected, options.get("rtol", 1e-5), options.get("atol", 1e-6))


_FLOAT_OUTPUT_KEPT = {"Cast", "CastLike", "QuantizeLinear", "DynamicQuantizeLinear"}


@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "options"), CASES)
def test_float64_inputs_compute_in_float64(op, inputs, attrs, opset, options):
    """The same cases with float inputs in float64: no handler falls back to float32."""
    if not any(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in inputs):
        pytest.skip("no float input")
    node = node_of(op, inputs, options.get("outputs", 1), attrs)
    want = run_ort(node, inputs, opset)
    got = run_torch(node, inputs, opset, dtype=torch.float64)
    for index, expected in enumerate(want):
        value = got[index]
        if expected.dtype == np.float32 and op not in _FLOAT_OUTPUT_KEPT:
            assert value.dtype == torch.float64, f"output {index} is {value.dtype}"
        value = as_expected(op, index, value, expected).astype(expected.dtype)
        assert_close(value, expected, 1e-4, 1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize(("op", "inputs", "attrs", "opset", "options"), CASES)
def test_cuda_matches_cpu(op, inputs, attrs, opset, options):
    """Every case on CUDA (TF32 off) gives the CPU result, outputs on the device."""
    node = node_of(op, inputs, options.get("outputs", 1), attrs)
    view = NodeView.of(node, opset, input_types=_types(inputs))
    handler = handler_for(view)
    cpu = handler(view, torch_inputs(op, inputs))
    on_device = [None if t is None else t.cuda() for t in torch_inputs(op, inputs)]
    with _no_tf32():
        cuda = handler(view, on_device)
    for index, (value, expected) in enumerate(zip(cuda, cpu, strict=True)):
        if op != "Constant":
            assert value.is_cuda, f"output {index} left the device"
        want = expected.detach().numpy()
        assert_close(value.detach().cpu().numpy(), want, 1e-5, 1e-6)


class _no_tf32:
    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved


# --- refusals -------------------------------------------------------------------------------


def _view(op: str, inputs: int = 1, domain: str = "", opset: int = 17, **attrs) -> NodeView:
    node = helper.make_node(op, [f"in{i}" for i in range(inputs)], ["out0"], name="n", **attrs)
    node.domain = domain
    return NodeView.of(node, opset)


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (_view("NoSuchOp"), "op 'NoSuchOp' (node 'n'): no torch handler"),
        (_view("Relu", domain="com.microsoft"), "domain 'com.microsoft'"),
        (_view("Conv", 2, foo=1), "attribute 'foo'"),
        (_view("Add", 2, opset=6, broadcast=1), "attribute 'broadcast'"),
        (_view("Relu", opset=1, consumed_inputs=[0]), "attribute 'consumed_inputs'"),
    ],
)
def test_handler_for_refuses_naming_the_reason(view: NodeView, reason: str) -> None:
    with pytest.raises(Unsupported, match=re.escape(reason)):
        handler_for(view)


def _declines(op: str, inputs: list, attrs: dict, opset: int, outputs: int = 1, types=None):
    node = node_of(op, inputs, outputs, attrs)
    with pytest.raises(Unsupported) as caught:
        run_torch(node, inputs, opset, input_types=types)
    return str(caught.value)


def test_handlers_decline_what_they_cannot_run_exactly() -> None:
    x = f32(1, 2, 4, 4)
    bn = [f32(2), f32(2), f32(2), f32(2, low=0.5)]
    assert "training" in _declines("BatchNormalization", [x, *bn], {"training_mode": 1}, 15)
    assert "Indices" in _declines("MaxPool", [x], {"kernel_shape": [2, 2]}, 12, outputs=2)
    resize = [x, None, np.array([1, 1, 0.5, 0.5], np.float32)]
    assert "antialias" in _declines("Resize", resize, {"antialias": 1, "mode": "linear"}, 18)
    zp = np.array(0, np.uint8)
    assert "block_size" in _declines("QuantizeLinear", [x, f32(1), zp], {"block_size": 2}, 21)
    float8 = [1, 1, TensorProto.FLOAT8E4M3FN]
    assert "FLOAT8" in _declines("QuantizeLinear", [x, f32(1), zp], {}, 19, types=float8)
    training = [x, np.array(0.5, np.float32), np.array(True)]
    assert "training" in _declines("Dropout", training, {}, 13)
    assert "uint64" in _declines("Add", [np.array([1], np.uint64)] * 2, {}, 14)
    rows = np.array([1, 2], np.uint8)  # one zero point per row of A: ONNX Runtime refuses it too
    a, b = np.zeros((2, 3), np.uint8), np.zeros((3, 4), np.int8)
    assert "per-row" in _declines("MatMulInteger", [a, b, rows], {}, 10)


# --- gradients ------------------------------------------------------------------------------


def _leaves(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(a.astype(np.float32)).requires_grad_(True) for a in arrays]


def _handled(op: str, inputs: list, attrs: dict | None = None, opset: int = 17, types=()):
    node = node_of(op, inputs, 1, attrs or {})
    view = NodeView.of(node, opset, input_types=types)
    return handler_for(view)(view, inputs)


@pytest.mark.parametrize(
    ("op", "arrays", "attrs"),
    [
        (
            "Conv",
            [f32(2, 4, 6, 6), f32(4, 2, 3, 3), f32(4)],
            {"group": 2, "auto_pad": "SAME_LOWER"},
        ),
        ("ConvTranspose", [f32(1, 2, 4, 4), f32(2, 3, 3, 3), f32(3)], {"strides": [2, 2]}),
        ("Gemm", [f32(3, 4), f32(5, 4), f32(5)], {"transB": 1, "alpha": 0.5}),
        ("MatMul", [f32(2, 3, 4), f32(4, 5)], {}),
    ],
)
def test_gradients_reach_every_float_input(op: str, arrays: list, attrs: dict) -> None:
    leaves = _leaves(*arrays)
    (y,) = _handled(op, leaves, attrs)
    (y * y).sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
        assert leaf.grad.abs().sum() > 0


def test_quantize_dequantize_pass_gradients_straight_through() -> None:
    x, scale, zero_point = _leaves(np.linspace(-2, 2, 41), np.array(0.01), np.array(3))
    types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT8)
    (q,) = _handled("QuantizeLinear", [x, scale, zero_point.detach()], opset=13, types=types)
    types = (TensorProto.INT8, TensorProto.FLOAT, TensorProto.INT8)
    (y,) = _handled("DequantizeLinear", [q, scale, zero_point.detach()], opset=13, types=types)
    y.sum().backward()
    inside = ((x / 0.01 + 3) >= -128) & ((x / 0.01 + 3) <= 127)
    assert torch.equal(x.grad, inside.float())  # identity inside the range, zero outside
    assert scale.grad.abs() > 0  # the scale trains (LSQ-style)
    assert set(q.detach().unique().tolist()) <= set(range(-128, 128))


# --- the codebook decoder `share` writes ----------------------------------------------------


def _decoder_model(layout: str, shape: tuple, bits: int, opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(bits * 31 + opset)
    axis = {"tensor": None, "channel": 0, "last": len(shape) - 1, "scaled": 0}[layout]
    channels = 1 if axis is None else shape[axis]
    labels = rng.integers(0, 1 << bits, (channels, int(np.prod(shape)) // channels))
    rows = 1 if layout == "scaled" else channels
    centroids = rng.standard_normal((rows, 1 << bits)).astype(np.float32)
    scales = rng.uniform(0.1, 2.0, channels).astype(np.float32) if layout == "scaled" else None
    book = Codebook(shape, centroids, labels, bits, axis, scales)
    out = helper.make_tensor_value_info("W", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([], "decoder", [], [out])
    graph.node.extend(emit_decoder(graph, Names(graph), "W", book, np.float32, opset=opset))
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _run_graph(model: onnx.ModelProto) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The model's first output computed node by node through the handlers; float
    initializers are leaves that require gradients."""
    values, types = {}, {}
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        value = torch.from_numpy(np.array(array))
        values[tensor.name] = value.requires_grad_(True) if value.is_floating_point() else value
        types[tensor.name] = tensor.data_type
    leaves = {n: v for n, v in values.items() if v.requires_grad}
    opset = model.opset_import[0].version
    for node in model.graph.node:
        view = NodeView.of(node, opset, input_types=[types.get(i, 0) for i in node.input])
        outputs = handler_for(view)(view, [values[i] if i else None for i in node.input])
        values.update(zip(node.output, outputs, strict=False))
    return values[model.graph.output[0].name], leaves


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8])
@pytest.mark.parametrize("shape", [(24, 10), (6, 5, 3, 3), (7, 3)])
@pytest.mark.parametrize("layout", ["tensor", "channel", "last", "scaled"])
def test_codebook_decoder_matches_onnxruntime_and_trains_its_centroids(layout, shape, bits, opset):
    """BitShift, Add (uint8 from opset 14, int32 before), Reshape, Slice (padded planes),
    Cast, Mul and GatherElements, exactly as `share` writes them; the gradient of the weight
    reaches the centroid table (and the channel scales) through the gather."""
    model = _decoder_model(layout, shape, bits, opset)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    (want,) = session.run(None, {})
    weight, leaves = _run_graph(model)
    np.testing.assert_array_equal(weight.detach().numpy(), want)
    weight.sum().backward()
    codebook = next(v for n, v in leaves.items() if "codebook" in n)
    if layout == "scaled":  # d(sum W)/d(entry k) = sum of the scales of the weights using k
        scale = next(v for n, v in leaves.items() if "scale" in n)
        assert (scale.grad != 0).all()
        expected = float(scale.detach().reshape(-1).sum()) * int(np.prod(shape)) / shape[0]
        assert float(codebook.grad.sum()) == pytest.approx(expected, rel=1e-5)
    else:  # each weight reads one entry: the entries' gradients count their uses
        assert float(codebook.grad.sum()) == int(np.prod(shape))
        assert (codebook.grad >= 0).all() and (codebook.grad > 0).any()
