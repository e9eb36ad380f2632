"""Unusual but valid models, built with ``onnx.helper``: every one loads and runs in ORT 1.31.

Each builder returns an ``onnx.ModelProto`` (IR version <= 10) that passes ``onnx.checker``;
``HOSTILE_MODELS`` maps a case name to its builder. The models are the shapes real exports take
that an optimizer must survive: weights in Constant nodes, fp16 weights or a whole fp16 model,
already-quantized ops (QLinearConv, QDQ), com.microsoft contrib ops, several outputs, dynamic
dims, weights inside If/Loop/Scan bodies, opset imports nobody uses, an empty graph and graph
inputs that shadow initializers; and the layer-level cases of `tests.zoo.hostile_layers`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.hostile_layers import LAYER_CASES
from tests.zoo.small_cnn import (
    FLOAT,
    cnn_nodes,
    cnn_weights,
    finish,
    initializers_to_constants,
    small_cnn,
    value,
)


def constant_weights(seed: int = 0) -> onnx.ModelProto:
    """``small_cnn`` with every weight in a Constant node."""
    return initializers_to_constants(small_cnn(seed))


def fp16_weights(seed: int = 0) -> onnx.ModelProto:
    """Weights stored in float16, each Cast to float before use (mixed-precision exports)."""
    weights = cnn_weights(seed)
    casts = [helper.make_node("Cast", [f"{k}.fp16"], [k], to=FLOAT) for k in weights]
    inits = [numpy_helper.from_array(v.astype(np.float16), f"{k}.fp16") for k, v in weights.items()]
    return finish(
        casts + cnn_nodes(), [value("x", ["N", 3, 8, 8])], [value("logits", ["N", 10])], inits
    )


def fp16_model(seed: int = 0) -> onnx.ModelProto:
    """The whole CNN in float16 (input, weights, output) without BatchNormalization."""
    weights = {k: v.astype(np.float16) for k, v in cnn_weights(seed).items()}
    nodes = [n for n in cnn_nodes() if n.op_type != "BatchNormalization"]
    nodes[1].input[0] = "c1"  # Relu reads the stem Conv directly
    return finish(
        nodes,
        [value("x", ["N", 3, 8, 8], TensorProto.FLOAT16)],
        [value("logits", ["N", 10], TensorProto.FLOAT16)],
        [numpy_helper.from_array(v, k) for k, v in weights.items() if not k.startswith("bn.")],
    )


def _q(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def qlinear_conv(seed: int = 0) -> onnx.ModelProto:
    """Float in, QuantizeLinear -> QLinearConv -> DequantizeLinear -> Relu -> GAP out."""
    rng = np.random.default_rng(seed)
    inits = [
        _q("xs", np.array(0.02, np.float32)),
        _q("xz", np.array(128, np.uint8)),
        _q("w", rng.integers(-60, 60, (16, 3, 3, 3)).astype(np.int8)),
        _q("ws", np.array(0.01, np.float32)),
        _q("wz", np.array(0, np.int8)),
        _q("ys", np.array(0.05, np.float32)),
        _q("yz", np.array(128, np.uint8)),
        _q("b", rng.integers(-500, 500, 16).astype(np.int32)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node(
            "QLinearConv",
            ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
            ["yq"],
            pads=[1] * 4,
        ),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        helper.make_node("Relu", ["y"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["out"]),
    ]
    return finish(nodes, [value("x", ["N", 3, 8, 8])], [value("out", ["N", 16, 1, 1])], inits)


def qdq_cnn(seed: int = 0) -> onnx.ModelProto:
    """QDQ form (what ORT's quantizer writes): DQ(int8 weight) -> Conv between Q/DQ pairs."""
    rng = np.random.default_rng(seed)
    inits = [
        _q("s", np.array(0.02, np.float32)),
        _q("z", np.array(128, np.uint8)),
        _q("wq", rng.integers(-60, 60, (16, 3, 3, 3)).astype(np.int8)),
        _q("ws", (0.005 + 0.01 * rng.random(16)).astype(np.float32)),
        _q("wz", np.zeros(16, np.int8)),
        _q("bias", (0.1 * rng.standard_normal(16)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd", "bias"], ["c"], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["out"]),
    ]
    return finish(nodes, [value("x", ["N", 3, 8, 8])], [value("out", ["N", 16])], inits)


def contrib_ops(seed: int = 0) -> onnx.ModelProto:
    """com.microsoft FusedConv (+BN after it), Gelu and QuickGelu between ONNX ops."""
    w = cnn_weights(seed)
    rng = np.random.default_rng(seed + 1)
    inits = [numpy_helper.from_array(w[k], k) for k in ("stem.w", "stem.b", "res.w", "res.b")]
    inits += [
        numpy_helper.from_array(w[k], k) for k in ("bn.scale", "bn.bias", "bn.mean", "bn.var")
    ]
    inits.append(
        numpy_helper.from_array((0.2 * rng.standard_normal((32, 10))).astype(np.float32), "mm.w")
    )
    ms = "com.microsoft"
    nodes = [
        helper.make_node(
            "FusedConv",
            ["x", "stem.w", "stem.b"],
            ["c1"],
            domain=ms,
            activation="Relu",
            pads=[1] * 4,
        ),
        helper.make_node(
            "BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"]
        ),
        helper.make_node("Conv", ["b1", "res.w", "res.b"], ["c2"], pads=[1] * 4),
        helper.make_node("Gelu", ["c2"], ["g2"], domain=ms),
        helper.make_node("GlobalAveragePool", ["g2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("MatMul", ["flat", "mm.w"], ["mm"]),
        helper.make_node("QuickGelu", ["mm"], ["out"], domain=ms, alpha=1.702),
    ]
    return finish(
        nodes, [value("x", ["N", 3, 8, 8])], [value("out", ["N", 10])], inits, domains={ms: 1}
    )


def multi_output(seed: int = 0) -> onnx.ModelProto:
    """The CNN with three outputs: the logits, the stem's BN output (also read inside) and a
    second head on the pooled features."""
    model = small_cnn(seed)
    rng = np.random.default_rng(seed + 2)
    graph = model.graph
    graph.initializer.append(
        numpy_helper.from_array((0.1 * rng.standard_normal((5, 32))).astype(np.float32), "aux.w")
    )
    graph.node.append(helper.make_node("Gemm", ["flat", "aux.w"], ["aux"], transB=1))
    graph.output.extend([value("b1", ["N", 32, 8, 8]), value("aux", ["N", 5])])
    onnx.checker.check_model(model, full_check=True)
    return model


def pre_bn_output(seed: int = 0) -> onnx.ModelProto:
    """The CNN with the stem Conv's output (read by the BatchNormalization) as a second output:
    folding the BN would make that output a different tensor."""
    model = small_cnn(seed)
    model.graph.output.append(value("c1", ["N", 32, 8, 8]))
    onnx.checker.check_model(model, full_check=True)
    return model


def dynamic_dims(seed: int = 0) -> onnx.ModelProto:
    """The CNN with dynamic batch and spatial dims (x [N, 3, H, W])."""
    return small_cnn(seed, size="H")


def dynamic_sequence(seed: int = 0) -> onnx.ModelProto:
    """An MLP over tokens: x [batch, seq, 16] -> MatMul/Add/Relu/MatMul -> [batch, seq, 8]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((0.3 * rng.standard_normal((16, 32))).astype(np.float32), "w1"),
        numpy_helper.from_array((0.1 * rng.standard_normal(32)).astype(np.float32), "b1"),
        numpy_helper.from_array((0.3 * rng.standard_normal((32, 8))).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["y"]),
    ]
    return finish(
        nodes, [value("x", ["batch", "seq", 16])], [value("y", ["batch", "seq", 8])], inits
    )


def loop_model(seed: int = 0) -> onnx.ModelProto:
    """A Loop (3 trips) whose body multiplies the state by a weight stored inside the body;
    the body also reads an outer-scope tensor produced by a Conv (implicit input)."""
    rng = np.random.default_rng(seed)
    w_body = (0.5 * rng.standard_normal((16, 16))).astype(np.float32)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["state", "body.w"], ["mm"]),
            helper.make_node("Add", ["mm", "outer"], ["added"]),
            helper.make_node("Tanh", ["added"], ["state_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "loop_body",
        [
            value("iter", [], TensorProto.INT64),
            value("cond_in", [], TensorProto.BOOL),
            value("state", ["N", 16]),
        ],
        [value("cond_out", [], TensorProto.BOOL), value("state_out", ["N", 16])],
        [numpy_helper.from_array(w_body, "body.w")],
    )
    inits = [
        numpy_helper.from_array(np.array(3, np.int64), "trips"),
        numpy_helper.from_array(np.array(True), "cond"),
        numpy_helper.from_array((0.3 * rng.standard_normal((16, 16))).astype(np.float32), "w0"),
        numpy_helper.from_array((0.1 * rng.standard_normal(16)).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("Add", ["h", "bias"], ["outer"]),
        helper.make_node("Loop", ["trips", "cond", "outer"], ["y"], body=body),
    ]
    return finish(nodes, [value("x", ["N", 16])], [value("y", ["N", 16])], inits)


def scan_model(seed: int = 0) -> onnx.ModelProto:
    """A Scan over the sequence axis with a recurrent state and a weight inside the body."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["x_t", "body.wx"], ["xw"]),
            helper.make_node("Add", ["xw", "h"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_next"]),
            helper.make_node("Identity", ["h_next"], ["y_t"]),
        ],
        "scan_body",
        [value("h", [8]), value("x_t", [4])],
        [value("h_next", [8]), value("y_t", [8])],
        [
            numpy_helper.from_array(
                (0.5 * rng.standard_normal((4, 8))).astype(np.float32), "body.wx"
            )
        ],
    )
    inits = [numpy_helper.from_array(np.zeros(8, np.float32), "h0")]
    nodes = [
        helper.make_node("Relu", ["x"], ["xr"]),
        helper.make_node("Scan", ["h0", "xr"], ["h_last", "ys"], body=body, num_scan_inputs=1),
    ]
    return finish(
        nodes, [value("x", ["seq", 4])], [value("h_last", [8]), value("ys", ["seq", 8])], inits
    )


def if_with_outer_conv(seed: int = 0) -> onnx.ModelProto:
    """Conv -> BN where the Conv's output is also read inside an If branch (outer scope):
    folding the BN must not rename the tensor the branch reads."""
    model = small_cnn(seed)
    rng = np.random.default_rng(seed + 3)
    branch_w = (0.1 * rng.standard_normal((10, 32))).astype(np.float32)

    def branch(name: str, scale: float) -> onnx.GraphProto:
        return helper.make_graph(
            [
                helper.make_node("GlobalAveragePool", ["c1"], [f"{name}.g"]),
                helper.make_node("Flatten", [f"{name}.g"], [f"{name}.f"]),
                helper.make_node(
                    "Gemm", [f"{name}.f", f"{name}.w"], [f"{name}.out"], transB=1, alpha=scale
                ),
            ],
            name,
            [],
            [value(f"{name}.out", ["N", 10])],
            [numpy_helper.from_array(branch_w, f"{name}.w")],
        )

    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    graph.node.extend(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], keepdims=0),
            helper.make_node("Greater", ["mean", "zero"], ["cond"]),
            helper.make_node(
                "If",
                ["cond"],
                ["branch"],
                then_branch=branch("then", 1.0),
                else_branch=branch("else", -1.0),
            ),
            helper.make_node("Add", ["logits", "branch"], ["y"]),
        ]
    )
    graph.output[0].CopyFrom(value("y", ["N", 10]))
    onnx.checker.check_model(model, full_check=True)
    return model


def unused_domains(seed: int = 0) -> onnx.ModelProto:
    """The CNN importing opset domains none of its nodes use."""
    model = small_cnn(seed)
    model.opset_import.extend(
        [
            helper.make_opsetid("ai.onnx.ml", 3),
            helper.make_opsetid("com.microsoft", 1),
            helper.make_opsetid("org.example.unused", 1),
        ]
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def empty_graph(seed: int = 0) -> onnx.ModelProto:
    """No nodes at all: the graph output is the graph input."""
    return finish([], [value("x", ["N", 4])], [value("x", ["N", 4])])


def constant_output(seed: int = 0) -> onnx.ModelProto:
    """One input that nothing reads; the output is an initializer (no node computes it)."""
    table = numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal((3, 4)).astype(np.float32), "table"
    )
    return finish([], [value("x", ["N", 4])], [value("table", [3, 4])], [table])


def shadowed_initializers(seed: int = 0) -> onnx.ModelProto:
    """The CNN whose Conv weights and BN mean are also graph inputs: initializers are only
    defaults the caller may override, so no pass may treat them as constants."""
    model = small_cnn(seed)
    inits = {t.name: t for t in model.graph.initializer}
    for name in ("stem.w", "bn.mean", "res.w", "fc.w"):
        model.graph.input.append(value(name, list(inits[name].dims)))
    onnx.checker.check_model(model, full_check=True)
    return model


def nameless_nodes(seed: int = 0) -> onnx.ModelProto:
    """The CNN with no node names at all (names are optional in ONNX)."""
    model = small_cnn(seed)
    for node in model.graph.node:
        node.name = ""
    onnx.checker.check_model(model, full_check=True)
    return model


HOSTILE_MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "constant_weights": constant_weights,
    "fp16_weights": fp16_weights,
    "fp16_model": fp16_model,
    "qlinear_conv": qlinear_conv,
    "qdq_cnn": qdq_cnn,
    "contrib_ops": contrib_ops,
    "multi_output": multi_output,
    "pre_bn_output": pre_bn_output,
    "dynamic_dims": dynamic_dims,
    "dynamic_sequence": dynamic_sequence,
    "loop_model": loop_model,
    "scan_model": scan_model,
    "if_with_outer_conv": if_with_outer_conv,
    "unused_domains": unused_domains,
    "empty_graph": empty_graph,
    "constant_output": constant_output,
    "shadowed_initializers": shadowed_initializers,
    "nameless_nodes": nameless_nodes,
    **LAYER_CASES,
}
