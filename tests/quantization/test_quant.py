"""The `quant` pass: int8 kernels under ORT, accuracy on real labels, structure, refusals."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.quant import QuantOptions, QuantPass

from onnxopt.data.sources import IterableSource, RandomSource, input_specs, open_data
from onnxopt.errors import InputError
from onnxopt.infra.options import build_options
from onnxopt.infra.pass_base import PassContext
from onnxopt.quantization.coverage import int8_coverage
from onnxopt.runtime.session import make_session
from tests.conftest import REPO, run_cli, run_pass
from tests.conftest import float_model as _model
from tests.quantization.test_quant_parts import stem_block_model

DIGITS_VAL = REPO / "examples" / "digits_val.npz"


def quantize(model, calib, **options):
    ctx = PassContext(calibration=calib)
    opts = build_options(QuantOptions, options, "quant")
    return run_pass(QuantPass(opts), model, ctx)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model).run(None, feed)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def kernels(model: onnx.ModelProto) -> Counter:
    return Counter(int8_coverage(model).kernels)


@pytest.fixture(scope="module")
def digits():
    model = onnx.load(str(REPO / "examples" / "digits_cnn.onnx"))
    return model, open_data(REPO / "examples" / "digits_calib.npz", model)


@pytest.fixture(scope="module")
def digits_quantized(digits):
    model, calib = digits
    return quantize(model, calib)


def test_digits_accuracy_within_half_a_point(digits, digits_quantized):
    model, _ = digits
    val = np.load(DIGITS_VAL)
    accuracy = {}
    for key, m in (("float", model), ("int8", digits_quantized.model)):
        logits = run(m, {"input": val["input"]})[0]
        accuracy[key] = float(np.mean(logits.argmax(1) == val["label"]))
    assert accuracy["float"] - accuracy["int8"] <= 0.005
    assert accuracy["int8"] >= 0.99


def test_digits_runs_entirely_in_int8_kernels(digits_quantized):
    coverage = int8_coverage(digits_quantized.model)
    assert coverage.fraction == 1.0
    assert coverage.dq_to_q == 0
    assert coverage.activation_qdq == 1  # only the input's QuantizeLinear runs
    assert coverage.kernels["QLinearConv"] == 7
    assert {"QLinearAdd", "QLinearConcat", "QGemm"} <= set(coverage.kernels)
    assert "Conv" not in coverage.kernels and "Relu" not in coverage.kernels


def test_digits_qdq_structure(digits_quantized):
    model = digits_quantized.model
    ops = Counter(n.op_type for n in model.graph.node)
    assert "Relu" not in ops and "BatchNormalization" not in ops
    weights = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and "weight" in n.input[0]
    ]
    inits = {t.name: t for t in model.graph.initializer}
    for node in weights:
        assert inits[node.input[0]].data_type == TensorProto.INT8
        assert numpy_helper.to_array(inits[node.input[1]]).ndim == 1  # per-channel scales
        assert numpy_helper.to_array(inits[node.input[2]]).max() == 0  # symmetric
    biases = [
        n for n in model.graph.node if n.op_type == "DequantizeLinear" and ".bias_" in n.input[0]
    ]
    assert biases and all(inits[n.input[0]].data_type == TensorProto.INT32 for n in biases)
    activations = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert all(inits[n.input[2]].data_type == TensorProto.UINT8 for n in activations)
    stats = digits_quantized.stats
    assert stats["activation_type"] == "uint8" and stats["per_channel"] is True
    assert stats["absorbed_activations"] == 7


def test_symmetric_int8_activations_keep_relu(digits):
    model, calib = digits
    result = quantize(
        model, calib, activation_type="int8", symmetric_activations=True, rounding="nearest"
    )
    graph = result.model.graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["Relu"] == 7  # a zero point of 0 cannot clamp negatives: Relu must stay
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        assert inits[node.input[2]].dtype == np.int8 and inits[node.input[2]] == 0
    val = np.load(DIGITS_VAL)
    logits = run(result.model, {"input": val["input"]})[0]
    assert np.mean(logits.argmax(1) == val["label"]) >= 0.99


def test_bias_is_int32_with_scale_x_times_w(digits_quantized):
    model = digits_quantized.model
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    x_dq, w_dq, b_dq = (producers[name] for name in conv.input)
    expected = np.float32(inits[x_dq.input[1]]) * inits[w_dq.input[1]]
    np.testing.assert_array_equal(inits[b_dq.input[1]], expected.astype(np.float32))


def test_float_stem_block_quantizes_only_the_narrow_boundary():
    """MobileNetV2's first block: stem and depthwise 32 stay float on cpu, the first Q is on
    the depthwise output, then int8; one rounding point fewer, less error."""
    model = stem_block_model()
    feed = {"x": np.random.default_rng(1).standard_normal((8, 3, 64, 64)).astype(np.float32)}
    reference = run(model, feed)[0]
    errors = {}
    for float_stem in (True, False):
        calib = RandomSource(input_specs(model), seed=0, batches=4, batch=8)
        result = quantize(model, calib, float_stem=float_stem)
        coverage = int8_coverage(result.model)
        got = run(result.model, feed)[0]
        errors[float_stem] = np.linalg.norm(got - reference) / np.linalg.norm(reference)
        assert cosine(reference, got) > 0.999 and coverage.dq_to_q == 0
        if float_stem:
            assert coverage.float_layers == ["stem", "dw"]
            assert coverage.kernels["QLinearConv"] == 2
            initializers = {t.name for t in result.model.graph.initializer}
            quantized = [
                n.input[0]
                for n in result.model.graph.node
                if n.op_type == "QuantizeLinear" and n.input[0] not in initializers
            ]
            assert quantized[:2] == ["d6", "p"] and len(quantized) == 3  # boundary, int8 outputs
    assert errors[True] < 0.9 * errors[False]  # 0.021 against 0.024 (seeded)


def test_convbnrelu_se_block_and_pooling_fuse(convbnrelu_path):
    model = onnx.load(str(convbnrelu_path))
    calib = RandomSource(input_specs(model), seed=0, batches=4, batch=8)
    result = quantize(model, calib, float_stem=False)  # every op int8, the stem too
    coverage = int8_coverage(result.model)
    assert coverage.fraction == 1.0 and coverage.dq_to_q == 0
    for kernel in (
        "QLinearConv",
        "QLinearAdd",
        "QLinearConcat",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearGlobalAveragePool",
        "QGemm",
    ):
        assert kernel in coverage.kernels, kernel
    feed = {"input": np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)}
    assert cosine(run(model, feed)[0], run(result.model, feed)[0]) > 0.98


@pytest.fixture(scope="module")
def transformer_data(transformer_path):
    model = onnx.load(str(transformer_path))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((8, 16, 32)).astype(np.float32)} for _ in range(8)]
    return model, IterableSource(batches[:6], input_specs(model)), batches[6:]


def test_transformer_cosine_and_int8_matmuls(transformer_data):
    model, calib, held_out = transformer_data
    result = quantize(model, calib, activations="static")
    for feed in held_out:
        assert cosine(run(model, feed)[0], run(result.model, feed)[0]) >= 0.99
    coverage = int8_coverage(result.model)
    assert coverage.fraction >= 0.95  # attention MatMuls of two activations stay float
    assert coverage.dq_to_q == 0
    assert "Softmax" in coverage.kernels and "LayerNormalization" in coverage.kernels
    assert any("MatMul of two activations" in reason for reason in result.skipped)


def test_same_seed_same_bytes(digits):
    model, calib = digits
    first = quantize(model, calib).model.SerializeToString()
    second = quantize(model, calib).model.SerializeToString()
    assert first == second


def test_exclude_by_op_type_and_name(digits):
    model, calib = digits
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    result = quantize(
        model, calib, exclude=["Add", first_conv], rounding="nearest", bias_correction=False
    )
    ops = Counter(n.op_type for n in result.model.graph.node)
    assert ops["Add"] == 1
    kept = {n.name for n in result.model.graph.node if n.op_type == "Conv"}
    coverage = int8_coverage(result.model)
    assert "QLinearAdd" not in coverage.kernels
    assert coverage.float_layers == [first_conv] or first_conv in str(coverage.float_layers)
    assert first_conv in kept
    assert any("excluded" in reason and first_conv in reason for reason in result.skipped)


def test_fallback_keeps_sensitive_layers_float_to_meet_target(digits):
    model, calib = digits
    val = np.load(DIGITS_VAL)
    result = quantize(
        model,
        calib,
        target_cosine=0.99999,
        rounding="nearest",
        bias_correction=False,
        equalize=False,
    )
    fallback = result.stats["fallback"]
    assert fallback["target_met"] and fallback["cosine"] >= 0.99999
    assert 0 < len(fallback["kept_float"]) < 12
    assert all(isinstance(entry["cosine_gain"], float) for entry in fallback["kept_float"])
    logits = run(model, {"input": val["input"][:256]})[0]
    assert cosine(logits, run(result.model, {"input": val["input"][:256]})[0]) >= 0.99999


def test_weights_in_constant_nodes_are_quantized():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight)),
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["y"], ["out"], name="relu"),
    ]
    model = _model(nodes, [("x", [1, 3, 8, 8])], [("out", [1, 8, 8, 8])])
    result = quantize(model, _random(model), prepare=False, bias_correction=False)
    assert result.changed
    assert "Constant" not in Counter(n.op_type for n in result.model.graph.node)
    assert int8_coverage(result.model).fraction == 1.0


def test_resize_scales_stay_float_and_resize_runs_in_int8():
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Resize", ["a", "", "scales"], ["b"], mode="nearest", name="up"),
        helper.make_node("Conv", ["b", "w2"], ["out"], pads=[1, 1, 1, 1], name="conv2"),
    ]
    model = _model(nodes, [("x", [1, 3, 8, 8])], [("out", [1, 4, 16, 16])], inits)
    result = quantize(model, _random(model))
    scales = next(t for t in result.model.graph.initializer if t.name == "scales")
    assert scales.data_type == TensorProto.FLOAT
    coverage = int8_coverage(result.model)
    assert coverage.fraction == 1.0 and coverage.dq_to_q == 0 and "Resize" in coverage.kernels


def test_already_quantized_model_is_declined_unchanged(digits, digits_quantized):
    _, calib = digits
    again = quantize(digits_quantized.model, calib)
    assert not again.changed
    assert again.model.SerializeToString() == digits_quantized.model.SerializeToString()
    assert "already quantized" in again.skipped[0] and "QuantizeLinear" in again.skipped[0]


def test_model_without_weights_is_declined():
    nodes = [helper.make_node("Add", ["x", "x"], ["y"], name="add")]
    model = _model(nodes, [("x", [1, 4])], [("y", [1, 4])])
    result = quantize(model, _random(model))
    assert not result.changed
    assert any("nothing quantized" in reason for reason in result.skipped)


def test_missing_calibration_is_an_input_error(digits):
    model, _ = digits
    with pytest.raises(InputError, match="calibration"):
        QuantPass().run(model, PassContext())


def test_opset_12_model_is_converted_for_per_channel_weights():
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    model = _model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], inits, opset=12)
    result = quantize(model, _random(model))
    assert result.stats["converted_opset"] == [12, 13] and result.stats["per_channel"]
    make_session(result.model)  # per-channel DequantizeLinear loads in ORT


def test_cli_optimize_end_to_end(tmp_path: Path):
    out = tmp_path / "digits_int8.onnx"
    done = run_cli(
        "optimize",
        REPO / "examples" / "digits_cnn.onnx",
        "--passes",
        "quant",
        "--calib",
        REPO / "examples" / "digits_calib.npz",
        "-o",
        out,
    )
    assert done.returncode == 0, done.stderr
    quantized = onnx.load(str(out))
    assert int8_coverage(quantized).fraction == 1.0
    assert any(p.key == "onnxopt.pipeline" and "quant" in p.value for p in quantized.metadata_props)


def _random(model: onnx.ModelProto) -> RandomSource:
    return RandomSource(input_specs(model), seed=0, batches=4)


def test_quant_has_the_manager_run_cleanup_right_before_it_once(digits_model, digits_calib):
    from onnxopt import api

    alone = api.optimize(digits_model, None, passes="quant", calib=digits_calib).report
    assert [(r.name, r.required_by, r.status) for r in alone.passes] == [
        ("cleanup", "quant", "changed"),
        ("quant", "", "changed"),
    ]
    assert alone.passes[0].stats["bn_folded"] > 0
    assert alone.passes[0].fidelity is not None  # gated like any pass
    after = api.optimize(digits_model, None, passes="cleanup,quant", calib=digits_calib).report
    assert [(r.name, r.required_by) for r in after.passes] == [("cleanup", ""), ("quant", "")]
    unprepared = api.optimize(
        digits_model, None, passes="quant{prepare=false}", calib=digits_calib
    ).report
    assert [r.name for r in unprepared.passes] == ["quant"]


def test_quant_uses_the_model_as_given_when_ort_cannot_load_its_cleaned_copy(
    digits_model, digits_calib, monkeypatch
):
    from onnxopt.passes import cleanup as cleanup_module

    from onnxopt import api
    from onnxopt.infra.pass_base import PassResult

    cleanup_apply = cleanup_module.CleanupPass.apply

    def unloadable_cleanup(self, model, ctx):
        result = cleanup_apply(self, model, ctx)
        broken = onnx.ModelProto()
        broken.CopyFrom(result.model)
        first = broken.graph.node[0].output[0]
        broken.graph.node.append(helper.make_node("Nope", [first], ["x"], domain="no.such"))
        broken.opset_import.append(helper.make_opsetid("no.such", 1))  # passes the checker
        return PassResult(broken, True, result.stats, result.skipped)

    monkeypatch.setattr(cleanup_module.CleanupPass, "apply", unloadable_cleanup)
    cleanup, quant = api.optimize(
        digits_model, None, passes="quant", calib=digits_calib
    ).report.passes
    assert (cleanup.required_by, cleanup.status) == ("quant", "rolled back")
    assert "onnxruntime" in cleanup.reason
    assert quant.status == "changed"
    assert quant.before == cleanup.before  # quant ran on the model as given
