"""The torch view of whole models: parity with ONNX Runtime (fp32, quantized, shared), what
trains, and write-back of untouched parameters changing no value."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from onnxopt.api import optimize
from onnxopt.training.graph_module import GraphModule
from onnxopt.training.nodes import Unsupported
from onnxopt.training.run import write_back
from onnxopt.training.trainables import plan_training
from tests.conftest import float_model, ort_outputs, random_feed


def torch_outputs(model: onnx.ModelProto, feed: dict, plan=None) -> list[np.ndarray]:
    module = GraphModule(model, plan)
    with torch.no_grad():
        got = module(*[torch.from_numpy(feed[name]) for name in module.input_names])
    return [t.numpy() for t in got]


def unoptimized_outputs(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    """ONNX Runtime running every node as written: its fused int8 kernels requantize
    differently from QuantizeLinear/DequantizeLinear (by a unit here and there)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_parity(model: onnx.ModelProto, feed: dict, rtol: float = 1e-4,
                  flips: float = 0.0) -> None:
    """Every sample's outputs within `rtol` of ONNX Runtime's, but a share `flips` of samples:
    in a quantized graph, float sums taken in another order can move a value across a rounding
    boundary (one int8 step), which then shows downstream."""
    expected = unoptimized_outputs(model, feed)
    for plan in (None, plan_training(model)):
        for want, got in zip(expected, torch_outputs(model, feed, plan), strict=True):
            scale = max(1.0, float(np.abs(want).max()))
            error = np.abs(got - want).reshape(len(want), -1).max(axis=1)
            assert (error > rtol * scale).mean() <= flips, error.max()


@pytest.fixture(scope="module")
def digits_variants(digits_model, digits_calib, tmp_path_factory):
    """The digits CNN as it is, quantized, shared (4-bit codebooks) and both."""
    out = tmp_path_factory.mktemp("digits")
    models = {"fp32": onnx.load(digits_model)}
    for name, passes in {"quant": "quant", "share": "share{bits=4}",
                         "share_quant": "share{bits=4},quant"}.items():
        optimize(digits_model, out / f"{name}.onnx", passes=passes, calib=digits_calib)
        models[name] = onnx.load(out / f"{name}.onnx")
    return models


def digits_feed(digits_calib) -> dict:
    return {"input": np.load(digits_calib)["input"][:32]}


@pytest.mark.parametrize("variant", ["fp32", "quant", "share", "share_quant"])
def test_digits_variants_match_onnxruntime(digits_variants, digits_calib, variant):
    flips = 0.1 if "quant" in variant else 0.0
    assert_parity(digits_variants[variant], digits_feed(digits_calib), flips=flips)


@pytest.mark.parametrize("variant", ["quant", "share_quant"])
def test_quantized_view_matches_fused_int8_kernels_closely(digits_variants, digits_calib,
                                                           variant):
    model, feed = digits_variants[variant], digits_feed(digits_calib)
    (want,) = ort_outputs(model, feed)
    (got,) = torch_outputs(model, feed, plan_training(model))
    cosine = float((want * got).sum() / np.linalg.norm(want) / np.linalg.norm(got))
    assert cosine >= 0.999
    assert (want.argmax(1) == got.argmax(1)).mean() >= 0.95


def test_transformer_matches_onnxruntime(transformer_path):
    model = onnx.load(transformer_path)
    assert_parity(model, random_feed(model, seed=3, batch=4))


@pytest.fixture(scope="module")
def dynamic_transformer(transformer_path, tmp_path_factory) -> onnx.ModelProto:
    """The small transformer through `quant`: dynamic int8 MatMuls (MatMulInteger)."""
    out = tmp_path_factory.mktemp("dynamic")
    calib = out / "calib.npz"
    rng = np.random.default_rng(4)
    np.savez(calib, input=rng.standard_normal((64, 16, 32)).astype(np.float32))
    optimize(transformer_path, out / "quant.onnx", passes="quant", calib=calib)
    model = onnx.load(out / "quant.onnx")
    assert any(n.op_type == "MatMulInteger" for n in model.graph.node)
    return model


def test_dynamic_int8_transformer_matches_onnxruntime(dynamic_transformer):
    assert_parity(dynamic_transformer, random_feed(dynamic_transformer, seed=3, batch=4))


def test_dynamic_int8_weights_train_on_their_grid_with_the_scale_of_their_mul(
        dynamic_transformer):
    """Each MatMulInteger's int8 weight trains straight-through on its (-127, 127) grid, its
    scale the constant that quant multiplies into x_scale * w_scale; the bias after it trains
    in float; every trainable gets a gradient; untouched, write-back changes no value."""
    model = dynamic_transformer
    plan = plan_training(model)
    layers = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    by_name = {t.name: t for t in plan.trainables}
    scales = {n.input[1] for n in model.graph.node if n.op_type == "Mul"}
    for layer in layers:
        item = by_name[layer.input[1]]
        assert item.kind == "fake_quant" and item.grid == (-127, 127)
        assert item.scale in scales and item.zero_point == layer.input[3]
    assert plan.counts()["fake_quant"] == len(layers) and not plan.declined
    rescaled = {n.output[0] for n in model.graph.node if n.op_type == "Mul"
                and any(i.endswith("_float") for i in n.input)}
    biases = [n.input[1] for n in model.graph.node if n.op_type == "Add" and n.input[0] in
              rescaled]
    assert biases and all(by_name[b].kind == "direct" for b in biases)
    module = GraphModule(model, plan)
    (out,) = module(torch.from_numpy(random_feed(model, seed=5, batch=4)["input"]))
    out.pow(2).mean().backward()
    missing = [item.name for item, p in module.named_trainables()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing
    written = write_back(model, GraphModule(model, plan).constant_values())
    for before, after in zip(model.graph.initializer, written.graph.initializer, strict=True):
        a, b = onnx.numpy_helper.to_array(before), onnx.numpy_helper.to_array(after)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=before.name)


def test_mobilenet_matches_onnxruntime(mobilenet_path):
    model = onnx.load(mobilenet_path)
    assert_parity(model, random_feed(model, seed=1, batch=2))


def test_quantized_plan_trains_weights_scales_and_biases(digits_variants):
    model = digits_variants["quant"]
    counts = plan_training(model).counts()
    weight_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0].endswith("weight_quantized")]
    bias_dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and n.input[0].endswith("bias_quantized")]
    activation_qs = {n.input[1] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert counts["fake_quant"] == len(weight_dqs) > 0
    assert counts["derived_bias"] == len(bias_dqs)
    assert counts["log_scale"] == len(activation_qs)
    assert "direct" not in counts  # every float weight of this model went int8


def test_shared_plan_trains_centroids_not_indices(digits_variants):
    model = digits_variants["share"]
    plan = plan_training(model)
    kinds = {t.name: t.kind for t in plan.trainables}
    tables = [name for name in kinds if name.endswith(("share_codebook", "share_scale"))]
    assert any(name.endswith("share_codebook") for name in tables)
    # the decoder's table trains at codebook_lr; every other float weight at lr
    assert {name for name, kind in kinds.items() if kind == "codebook"} == set(tables)
    assert not any("share_idx" in name for name in kinds)


def test_int8_codebooks_stay_fixed_and_say_so(digits_variants):
    plan = plan_training(digits_variants["share_quant"])
    assert not any(t.name.endswith("share_codebook") for t in plan.trainables)
    assert any("share_codebook" in reason and "fixed" in reason for reason in plan.declined)


@pytest.mark.parametrize("variant", ["fp32", "quant", "share"])
def test_write_back_of_untouched_parameters_changes_no_value(digits_variants, variant):
    model = digits_variants[variant]
    module = GraphModule(model, plan_training(model))
    written = write_back(model, module.constant_values())
    before = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert after[name].dtype == value.dtype and after[name].shape == value.shape
        np.testing.assert_allclose(after[name], value, rtol=1e-6, err_msg=name)


def test_gradients_reach_every_trainable(digits_variants, digits_calib):
    model = digits_variants["quant"]
    module = GraphModule(model, plan_training(model))
    feed = digits_feed(digits_calib)
    (logits,) = module(torch.from_numpy(feed["input"]))
    logits.pow(2).mean().backward()
    missing = [item.name for item, p in module.named_trainables()
               if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_unsupported_op_is_named():
    node = onnx.helper.make_node("NonMaxSuppression", ["x", "s"], ["y"], name="nms")
    model = float_model([node], [("x", [1, 4, 4]), ("s", [1, 1, 4])], [("y", [1, 3])])
    with pytest.raises(Unsupported, match="NonMaxSuppression"):
        GraphModule(model)


def test_conv_then_batchnorm_runs_folded_with_gradients_for_both(digits_variants, digits_calib):
    """The share output keeps its BatchNormalizations: each Conv before one runs as one folded
    step (ONNX Runtime's numbers), and the Conv's weights and the norm's scale and shift all
    get gradients; a fused Conv's own output is not offered as a feature."""
    model = digits_variants["share"]
    module = GraphModule(model, plan_training(model))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    folded = [view.op_type for view, _ in module.steps].count("ConvBatchNormalization")
    assert folded == sum(1 for n in model.graph.node if n.op_type == "BatchNormalization") > 0
    assert not module.computed() & {n.output[0] for n in convs if _read_by_batchnorm(model, n)}
    assert_parity(model, digits_feed(digits_calib))
    (logits,) = module(torch.from_numpy(digits_feed(digits_calib)["input"]))
    logits.pow(2).mean().backward()
    grads = {item.name: p.grad for item, p in module.named_trainables()}
    norms = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    for name in [n.input[1] for n in norms] + [n.input[2] for n in norms]:
        assert grads[name] is not None and torch.any(grads[name] != 0), name


def test_a_conv_read_twice_is_not_folded():
    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (4, 3, 3, 3)), ("g", (4,)), ("b", (4,)), ("m", (4,)))]
    weights.append(onnx.numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "v"))
    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             onnx.helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
             onnx.helper.make_node("Add", ["n", "c"], ["y"])]
    model = float_model(nodes, [("x", [2, 3, 5, 5])], [("y", [2, 4, 5, 5])], weights)
    module = GraphModule(model, plan_training(model))
    assert "ConvBatchNormalization" not in [view.op_type for view, _ in module.steps]
    assert_parity(model, random_feed(model))


def _read_by_batchnorm(model: onnx.ModelProto, conv: onnx.NodeProto) -> bool:
    readers = [n for n in model.graph.node if conv.output[0] in n.input]
    return len(readers) == 1 and readers[0].op_type == "BatchNormalization"
