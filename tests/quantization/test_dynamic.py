"""`quant` with dynamic activations: ORT fuses it, it stays close to fp32 out of sample, weights
are int8, `auto` picks it for a transformer and not for a CNN, unfit MatMuls stay float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxopt.passes.quant import QuantOptions, QuantPass

from onnxopt.data.sources import IterableSource, input_specs
from onnxopt.infra.options import build_options
from onnxopt.infra.pass_base import PassContext
from onnxopt.runtime.session import make_session
from tests.conftest import float_model, run_cli, run_pass
from tests.zoo.bert import make_tiny_bert_onnx

COSINE_BAR = 0.9995
"""Measured 0.99999 on each held-out batch below (the outlier channels dominate it)."""
ERROR_BAR = 0.01
"""Error norm over the norm of the token-centred output; measured 0.0057-0.0063 (GPTQ)."""


def quantize(model, calib, **options):
    opts = build_options(QuantOptions, options, "quant")
    return run_pass(QuantPass(opts), model, PassContext(calibration=calib))


def feeds(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        ids = rng.integers(1, 200, (4, 12), dtype=np.int64)
        mask = np.ones_like(ids)
        for row, length in enumerate(rng.integers(4, 13, 4)):
            ids[row, length:], mask[row, length:] = 0, 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    path = make_tiny_bert_onnx(tmp_path_factory.mktemp("bert") / "bert.onnx")
    model = onnx.load(str(path))
    return model, IterableSource(feeds(0, 4), input_specs(model))


@pytest.fixture(scope="module")
def bert_dynamic(bert):
    model, calib = bert
    return quantize(model, calib, activations="dynamic")


def optimized_ops(model: onnx.ModelProto, tmp_path) -> Counter:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


def test_ort_fuses_every_rewritten_matmul(bert_dynamic, tmp_path):
    ops = Counter(n.op_type for n in bert_dynamic.model.graph.node)
    assert ops["MatMulInteger"] == 12  # 2 layers x (q, k, v, o, fc1, fc2)
    fused = optimized_ops(bert_dynamic.model, tmp_path)
    # ORT merges the DynamicQuantizeLinear nodes of one tensor (the q/k/v inputs): those
    # MatMuls run as MatMulIntegerToFloat reading one quantization, the others fully fused.
    assert fused["DynamicQuantizeMatMul"] + fused["MatMulIntegerToFloat"] == 12
    assert fused["DynamicQuantizeMatMul"] >= 6  # o, fc1, fc2 of each layer
    assert fused["MatMulInteger"] == 0
    assert fused["MatMul"] + fused["FusedMatMul"] == 4  # attention MatMuls: two activations


def test_bias_add_fuses_into_the_kernel(bert_dynamic, tmp_path):
    fused = optimized_ops(bert_dynamic.model, tmp_path)
    assert (
        fused["Add"] <= Counter(n.op_type for n in bert_dynamic.model.graph.node)["Add"] - 12
    )  # each Linear's bias Add went into its DynamicQuantizeMatMul


def test_held_out_cosine(bert, bert_dynamic):
    model, _ = bert
    reference, quantized = make_session(model), make_session(bert_dynamic.model)
    for feed in feeds(1, 3):  # not the calibration batches
        expected = reference.run(None, feed)[0]
        got = quantized.run(None, feed)[0]
        assert cosine(expected, got) >= COSINE_BAR
        centred = expected - expected.mean(axis=(0, 1))
        assert np.linalg.norm(got - expected) <= ERROR_BAR * np.linalg.norm(centred)


def test_weights_are_int8_per_output_column(bert_dynamic):
    inits = {t.name: t for t in bert_dynamic.model.graph.initializer}
    for node in bert_dynamic.model.graph.node:
        if node.op_type == "MatMulInteger":
            weight = inits[node.input[1]]
            assert weight.data_type == TensorProto.INT8
            zero = numpy_helper.to_array(inits[node.input[3]])
            assert zero.shape == (weight.dims[1],) and not zero.any()
    assert not any(
        t.data_type == TensorProto.FLOAT and len(t.dims) == 2 and t.dims[0] == 64 * 4
        for t in bert_dynamic.model.graph.initializer
    )


def test_file_is_smaller(bert, bert_dynamic):
    before = bert[0].ByteSize()
    after = bert_dynamic.model.ByteSize()
    assert after < 0.35 * before  # measured 0.326: int8 weights and tables, float biases, LN


def test_gptq_rounding_beats_nearest_on_held_out(bert):
    model, calib = bert
    nearest = quantize(model, calib, activations="dynamic", rounding="nearest").model
    gptq = quantize(model, calib, activations="dynamic").model
    reference = make_session(model)
    errors = {"nearest": 0.0, "gptq": 0.0}
    for feed in feeds(2, 3):
        expected = reference.run(None, feed)[0]
        for name, m in (("nearest", nearest), ("gptq", gptq)):
            errors[name] += float(np.square(make_session(m).run(None, feed)[0] - expected).sum())
    assert errors["gptq"] < errors["nearest"]


def test_auto_picks_dynamic_for_the_encoder(bert):
    model, calib = bert
    result = quantize(model, calib)
    assert result.stats["activations"] == "dynamic"
    assert "transformer-like" in result.stats["activations_reason"]
    assert result.skipped[0].startswith("static activations not used: transformer-like")
    assert "DynamicQuantizeLinear" in {n.op_type for n in result.model.graph.node}


def test_auto_picks_static_for_a_cnn(convbnrelu_path):
    model = onnx.load(str(convbnrelu_path))
    rng = np.random.default_rng(0)
    batches = [{"input": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)}]
    result = quantize(model, IterableSource(batches, input_specs(model)))
    assert result.stats["activations"] == "static"
    assert "not transformer-like" in result.stats["activations_reason"]
    assert "DynamicQuantizeLinear" not in {n.op_type for n in result.model.graph.node}


def test_matmul_of_two_activations_stays_float_with_a_reason():
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w"
    )
    model = float_model(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="project"),
            helper.make_node("MatMul", ["h", "y"], ["out"], name="pair"),
        ],
        [("x", [2, 8]), ("y", [8, 3])],
        [("out", [2, 3])],
        [weight],
    )
    rng = np.random.default_rng(1)
    batches = [
        {"x": rng.standard_normal((2, 8)).astype(np.float32),
         "y": rng.standard_normal((8, 3)).astype(np.float32)}
    ]  # fmt: skip
    result = quantize(model, IterableSource(batches, input_specs(model)), activations="dynamic")
    ops = {n.name: n.op_type for n in result.model.graph.node}
    assert ops["pair"] == "MatMul"
    assert "project" not in ops
    assert any("'pair'" in r and "needs a constant weight" in r for r in result.skipped)
    feed = batches[0]
    expected = make_session(model).run(None, feed)[0]
    got = make_session(result.model).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


def test_fallback_keeps_the_most_sensitive_matmuls_float(bert, bert_dynamic):
    model, calib = bert
    result = quantize(model, calib, activations="dynamic", target_cosine=0.999999)
    fallback = result.stats["fallback"]
    kept = {n for entry in fallback["kept_float"] for n in entry["nodes"]}
    assert 0 < len(kept) < 14 and fallback["target_met"]  # 12 MatMuls, 2 embedding tables
    matmuls = {n for n in kept if "MatMul" in n}
    assert result.stats["weights"] == 12 - len(matmuls)
    assert result.stats["int8_tables"] == 2 - (len(kept) - len(matmuls))
    names = {n.name for n in result.model.graph.node}
    assert kept <= names  # the float MatMuls are still there under their names
    reference = make_session(model)
    errors = []
    for quantized in (bert_dynamic.model, result.model):
        session = make_session(quantized)
        errors.append(
            sum(
                float(np.square(session.run(None, f)[0] - reference.run(None, f)[0]).sum())
                for f in feeds(1, 3)
            )
        )
    assert errors[1] < errors[0]  # held out: fewer int8 MatMuls, closer to fp32


def test_embedding_tables_are_int8_rows(bert, bert_dynamic):
    model, _ = bert
    inits = {t.name: t for t in bert_dynamic.model.graph.initializer}
    gathers = [
        n for n in bert_dynamic.model.graph.node
        if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
    ]  # fmt: skip
    tables = {inits[n.input[0]].data_type for n in gathers if inits[n.input[0]].dims[1] == 64}
    assert tables == {TensorProto.INT8}  # word and position tables
    assert bert_dynamic.stats["int8_tables"] == 2
    float_tables = [
        t
        for t in model.graph.initializer
        if len(t.dims) == 2 and t.dims[1] == 64 and t.dims[0] >= 64
    ]
    assert float_tables and not any(t.name in inits for t in float_tables)


def test_gemm_with_transposed_weight_and_bias(tmp_path):
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    scaled = numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")
    model = float_model(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1),
            helper.make_node("Gemm", ["h", "w2"], ["y"], name="scaled", alpha=0.5),
        ],
        [("x", [4, 16])],
        [("y", [4, 8])],
        [w, b, scaled],
    )
    batches = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(2)]
    result = quantize(model, IterableSource(batches, input_specs(model)), activations="dynamic")
    assert result.stats["quantized_ops"] == {"Gemm": 1}
    assert any("'scaled'" in r and "alpha" in r for r in result.skipped)
    assert optimized_ops(result.model, tmp_path)["DynamicQuantizeMatMul"] == 1
    feed = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    expected = make_session(model).run(None, feed)[0]
    got = make_session(result.model).run(None, feed)[0]
    np.testing.assert_allclose(got, expected, atol=0.03 * np.abs(expected).max())


def test_tables_stay_float_on_request(bert):
    model, calib = bert
    result = quantize(model, calib, activations="dynamic", int8_tables=False)
    assert "int8_tables" not in result.stats or result.stats["int8_tables"] == 0
    assert result.stats["quantized_ops"] == {"MatMul": 12}
    words = next(t for t in model.graph.initializer if list(t.dims) == [200, 64])
    assert words.name in {t.name for t in result.model.graph.initializer}


def test_cli_quant_picks_dynamic_and_says_why(bert, tmp_path):
    model, _ = bert
    source, calib, out = tmp_path / "bert.onnx", tmp_path / "calib.npz", tmp_path / "int8.onnx"
    onnx.save(model, str(source))
    batches = feeds(5, 8)
    np.savez(calib, **{k: np.concatenate([b[k] for b in batches]) for k in batches[0]})
    done = run_cli("optimize", source, "--passes", "quant", "--calib", calib, "-o", out)
    assert done.returncode == 0, done.stderr
    assert "static activations not used: transformer-like" in done.stdout
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
