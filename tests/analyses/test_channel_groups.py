"""Channel dependency analysis: coupling, offsets, blocks, and each refusal with its reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.analyses.channel_groups import analyze_channel_groups


class Net:
    """A tiny NCHW graph built op by op with seeded weights (input "x": 2x4x6x6)."""

    def __init__(self, channels: int = 4, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.channels = channels
        self.count = 0

    def name(self, op: str) -> str:
        self.count += 1
        return f"{op.lower()}{self.count}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        name = name or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, group: int = 1, name=None) -> str:
        w = self.const(self.rng.standard_normal((c_out, c_in // group, k, k)) * 0.3)
        b = self.const(self.rng.standard_normal(c_out) * 0.1)
        return self.op("Conv", [x, w, b], name, pads=[k // 2] * 4, group=group)

    def model(self, outputs: list[str], opset: int = 17) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "net",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, self.channels, 6, 6])],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 10
        done = onnx.shape_inference.infer_shapes(model).graph
        inferred = {
            v.name: v
            for v in (*done.value_info, *done.output)
            if v.type.tensor_type.HasField("shape")
        }
        for output in model.graph.output:
            if output.name in inferred:
                output.type.CopyFrom(inferred[output.name].type)
        onnx.checker.check_model(model, full_check=True)
        return model


def group_of(result, node_name: str):
    return next(g for g in result.groups if any(s.name == node_name for s in g.sources))


def layout_groups(result, tensor: str) -> list[tuple[int, int, int]]:
    return [(s.group, s.start, s.stop) for s in result.layouts[tensor].segments]


def head(net: Net, x: str, channels: int) -> str:
    """GlobalAveragePool -> Flatten -> Gemm to 3 logits (output 'y')."""
    pooled = net.op("Flatten", [net.op("GlobalAveragePool", [x])], axis=1)
    w = net.const(net.rng.standard_normal((3, channels)))
    return net.op("Gemm", [pooled, w, net.const(np.zeros(3))], "y", transB=1)


def test_residual_add_couples_both_producers():
    net = Net()
    a = net.op("Relu", [net.conv("x", 4, 8, name="a")])
    b = net.conv(a, 8, 8, name="b")
    c = net.op("Relu", [net.op("Add", [a, b])])
    head(net, net.conv(c, 8, 8, name="c"), 8)
    result = analyze_channel_groups(net.model(["y"]))
    residual = group_of(result, "a")
    assert sorted(s.name for s in residual.sources) == ["a", "b"]
    assert residual.prunable
    assert {c.name for c in result.consumers} >= {"b", "c"}


def test_concat_maps_offsets_and_depthwise_couples():
    net = Net()
    p = net.conv("x", 4, 6, 1, name="p")
    d = net.conv(net.conv("x", 4, 5, 1, name="q"), 5, 5, 3, group=5, name="dw")
    cat = net.op("Concat", [p, d], axis=1)
    head(net, net.conv(cat, 11, 8, name="after"), 8)
    result = analyze_channel_groups(net.model(["y"]))
    gp, gq = group_of(result, "p").id, group_of(result, "q").id
    assert layout_groups(result, cat) == [(gp, 0, 6), (gq, 0, 5)]
    assert layout_groups(result, d) == [(gq, 0, 5)]
    assert "depthwise" in {r.kind for r in result.roles}


def test_flatten_gemm_features_come_in_blocks():
    net = Net()
    conv = net.op("Relu", [net.conv("x", 4, 8, name="a")])
    flat = net.op("Flatten", [conv], axis=1)
    w = net.const(net.rng.standard_normal((8 * 36, 3)))
    net.op("Gemm", [flat, w], "y")
    result = analyze_channel_groups(net.model(["y"]))
    assert result.layouts[flat].block == 36 and result.layouts[flat].channels == 8
    assert group_of(result, "a").prunable


def test_squeeze_excite_multiplies_couple():
    net = Net()
    x = net.op("Relu", [net.conv("x", 4, 8, name="a")])
    s = net.conv(
        net.op("Relu", [net.conv(net.op("GlobalAveragePool", [x]), 8, 2, 1, name="r")]),
        2,
        8,
        1,
        name="e",
    )
    scaled = net.op("Mul", [x, net.op("Sigmoid", [s])])
    head(net, scaled, 8)
    result = analyze_channel_groups(net.model(["y"]))
    assert sorted(s.name for s in group_of(result, "a").sources) == ["a", "e"]
    assert group_of(result, "r").prunable


def test_split_maps_ranges():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    net.inits.append(numpy_helper.from_array(np.array([3, 5], np.int64), "sizes"))
    net.nodes.append(helper.make_node("Split", [a, "sizes"], ["s0", "s1"], name="split", axis=1))
    merged = net.op("Concat", [net.conv("s0", 3, 4, name="b"), "s1"], axis=1)
    head(net, merged, 9)
    result = analyze_channel_groups(net.model(["y"]))
    ga = group_of(result, "a").id
    assert layout_groups(result, "s1") == [(ga, 3, 8)]
    assert result.ranges[0].start == 0 and result.ranges[0].stop == 3


def test_opaque_op_blocks_the_groups_it_reads():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    soft = net.op("Softmax", [a], "soft", axis=1)
    head(net, net.conv(soft, 8, 8, name="b"), 8)
    result = analyze_channel_groups(net.model(["y"]))
    blocked = group_of(result, "a")
    assert not blocked.prunable
    assert blocked.reasons == ["read by Softmax 'soft', which the channel table does not cover"]
    assert group_of(result, "b").prunable
    assert any("Softmax 'soft'" in line and "'a'" in line for line in result.refusals())


def test_graph_output_is_never_pruned():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    head(net, net.conv(a, 8, 8, name="b"), 8)
    result = analyze_channel_groups(net.model(["y", a]))
    assert group_of(result, "a").reasons == [f"it reaches graph output '{a}'"]
    assert group_of(result, "b").prunable
    assert not group_of(result, "y").prunable


def test_grouped_conv_refuses_both_sides():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    g = net.conv(a, 8, 8, group=2, name="grouped")
    head(net, net.conv(g, 8, 8, name="c"), 8)
    result = analyze_channel_groups(net.model(["y"]))
    for name in ("a", "grouped"):
        group = group_of(result, name)
        assert not group.prunable
        assert "grouped Conv 'grouped' (group=2)" in group.reasons[0]
    assert group_of(result, "c").prunable


def test_reshape_keeps_the_channel_axis_or_flattens_it():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    shape = "shape"
    net.inits.append(numpy_helper.from_array(np.array([0, 8, 36], np.int64), shape))
    r = net.op("Reshape", [a, shape])
    back = "back"
    net.inits.append(numpy_helper.from_array(np.array([0, 8, 6, 6], np.int64), back))
    head(net, net.op("Reshape", [r, back]), 8)
    result = analyze_channel_groups(net.model(["y"]))
    assert group_of(result, "a").prunable
    assert [f.kind for role in result.roles for f in role.fixups] == ["reshape", "reshape"]


def test_reshape_that_moves_channels_is_refused():
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    net.inits.append(numpy_helper.from_array(np.array([0, 4, 2, 36], np.int64), "shape"))
    r = net.op("Reshape", [a, "shape"], "split_channels")
    net.inits.append(numpy_helper.from_array(np.array([0, 8, 6, 6], np.int64), "back"))
    head(net, net.op("Reshape", [r, "back"]), 8)
    result = analyze_channel_groups(net.model(["y"]))
    assert group_of(result, "a").reasons == ["Reshape 'split_channels' moves the channel axis"]


@pytest.mark.parametrize("const_shape, sliced", [((8, 1, 1), True), ((1,), False), ((6, 6), False)])
def test_constants_are_sliced_only_along_the_channel_axis(const_shape, sliced):
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    scaled = net.op("Mul", [a, net.const(np.ones(const_shape))])
    head(net, scaled, 8)
    result = analyze_channel_groups(net.model(["y"]))
    roles = [r for r in result.roles if r.kind == "elementwise"]
    assert bool(roles) == sliced
    assert group_of(result, "a").prunable


def test_digits_cnn_groups(digits_model):
    result = analyze_channel_groups(onnx.load(digits_model))
    assert len(result.prunable()) == 5
    sizes = sorted(g.size for g in result.prunable())
    assert sizes == [32, 32, 32, 32, 64]
    gemm = next(c for c in result.consumers if c.op_type == "Gemm")
    assert result.layouts[gemm.input].block == 16
    assert result.refusals() == [
        "channels of '/fc/Gemm' not pruned: it reaches graph output 'logits'"
    ]


@pytest.mark.parametrize("ends, refused", [(2**31, False), (5, True)])
def test_slice_passes_channels_unless_it_cuts_them(ends, refused):
    net = Net()
    a = net.conv("x", 4, 8, name="a")
    for name, value in (("starts", [0, 1]), ("ends", [ends, 6]), ("axes", [1, 2])):
        net.inits.append(numpy_helper.from_array(np.array(value, np.int64), name))
    cut = net.op("Slice", [a, "starts", "ends", "axes"], "cut")
    head(net, cut, 5 if refused else 8)
    result = analyze_channel_groups(net.model(["y"]))
    assert group_of(result, "a").reasons == (
        ["Slice 'cut' cuts the channel axis"] if refused else []
    )
