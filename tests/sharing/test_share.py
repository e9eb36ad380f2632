"""The `share` pass: exact dedup, codebooks decoded in-graph, data-aware fitting, budgets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxopt import api
from onnxopt.analyses.codebooks import find_decoders
from onnxopt.ir.bitpack import pack, packed_bytes, unpack
from onnxopt.ir.codebook import Codebook, emit_decoder
from onnxopt.ir.graph import Names
from onnxopt.quantization.shared import evaluate_decoder
from onnxopt.sharing.kmeans import kmeans_rows, nearest
from tests.conftest import ort_outputs, run_cli


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    """Op types of the graph ONNX Runtime runs after its load-time optimizations."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


# --- building blocks -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 1001])
def test_bitpack_round_trips_and_costs_exactly_bits_per_index(bits, count):
    indices = np.random.default_rng(bits * count).integers(0, 1 << bits, count)
    planes = pack(indices, bits)
    assert np.array_equal(unpack(planes, count), indices)
    assert sum(p.packed.size for p in planes) == packed_bytes(count, bits)
    assert packed_bytes(count, bits) <= -(-count * bits // 8) + 3


def test_bitpack_planes_are_planar_field_j_of_byte_i_is_value_j_times_bytes_plus_i():
    (plane,) = pack(np.arange(8) % 4, 2)  # 8 values, 4 per byte: 2 bytes
    fields = [[(byte >> (6 - 2 * j)) & 3 for byte in plane.packed] for j in range(4)]
    assert fields == [[0, 1], [2, 3], [0, 1], [2, 3]]


def test_kmeans_is_exact_with_few_distinct_values_and_labels_are_nearest():
    rng = np.random.default_rng(0)
    few = np.round(rng.standard_normal((4, 60)))
    centroids, labels = kmeans_rows(few, None, 16)
    assert np.array_equal(np.take_along_axis(centroids, labels, axis=1), few)
    values = rng.standard_normal((3, 500))
    centroids, labels = kmeans_rows(values, None, 8)
    assert np.array_equal(nearest(values, centroids), labels)
    assert np.all(np.diff(centroids, axis=1) >= 0)


def test_kmeans_weights_pull_centroids_towards_important_values():
    values = np.concatenate([np.linspace(-1, 1, 1000), [5.0, 5.2]])[None, :]
    heavy = np.ones_like(values)
    heavy[0, -2:] = 1e4
    plain, _ = kmeans_rows(values, None, 2)
    weighted, labels = kmeans_rows(values, heavy, 2)
    error = lambda c, w: float(np.sum(w * (np.take_along_axis(c, labels, 1) - values) ** 2))  # noqa: E731
    assert error(weighted, heavy) <= error(plain, heavy)
    assert abs(weighted[0, 1] - 5.1) < 0.05


LAYOUTS = [("tensor", 0), ("channel", 0), ("channel", 1), ("scaled", 0), ("scaled", 1)]
"""(codebook layout, 0 for the first axis or 1 for the last): see `_random_book`."""


@pytest.mark.parametrize(("layout", "axis"), LAYOUTS)
def test_decoder_reproduces_the_codebook_and_ort_folds_it_at_load(layout, axis, tmp_path):
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((48, 40)).astype(np.float32)
    book = _random_book(rng, weight.shape, 3, layout, axis)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 40])],
    )
    for position, node in enumerate(emit_decoder(graph, Names(graph), "W", book, np.float32)):
        graph.node.insert(position, node)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    x = rng.standard_normal((2, 48)).astype(np.float32)
    (y,) = ort_outputs(model, {"x": x})
    np.testing.assert_allclose(y, x @ _lookup(book), rtol=1e-5, atol=1e-5)
    assert _optimized_ops(model, tmp_path) == ["MatMul"]
    assert set(find_decoders(model.graph)) == {"W"}


def _random_book(rng, shape, bits: int, layout: str, axis: int) -> Codebook:
    """A codebook of `layout` (tensor, channel or scaled) with random values."""
    axis = None if layout == "tensor" else (0 if axis == 0 else len(shape) - 1)
    channels = 1 if axis is None else shape[axis]
    labels = rng.integers(0, 1 << bits, (channels, int(np.prod(shape)) // channels))
    if layout != "scaled":
        centroids = rng.standard_normal((channels, 1 << bits)).astype(np.float32)
        return Codebook(shape, centroids, labels, bits, axis)
    centroids = rng.standard_normal((1, 1 << bits)).astype(np.float32)
    scales = rng.uniform(0.01, 2.0, channels).astype(np.float32)
    return Codebook(shape, centroids, labels, bits, axis, scales)


def _lookup(book: Codebook) -> np.ndarray:
    """The weight the codebook stands for, computed here independently of `Codebook`."""
    rows = book.centroids if book.scales is None else book.scales[:, None] * book.centroids
    rows = np.broadcast_to(rows, (book.labels.shape[0], rows.shape[1]))
    values = np.take_along_axis(rows, book.labels, axis=1)
    if book.axis not in (None, 0):
        values = values.T
    return values.reshape(book.shape)


def _decoded(book: Codebook, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        [], "g", [], [helper.make_tensor_value_info("W", TensorProto.FLOAT, list(book.shape))]
    )
    graph.node.extend(emit_decoder(graph, Names(graph), "W", book, np.float32, opset=opset))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)  # uint8 Add only from opset 14
    return model


@pytest.mark.parametrize("opset", [11, 17])
@pytest.mark.parametrize("bits", [1, 3, 4, 7, 8])
@pytest.mark.parametrize("shape", [(24, 10), (6, 5, 3, 3), (16, 12, 1, 1), (7, 3)])
@pytest.mark.parametrize(("layout", "axis"), LAYOUTS)
def test_decoded_weights_equal_the_codebook_lookup_exactly(layout, axis, shape, bits, opset):
    """Every layout, single- and multi-plane widths, index counts that need padding (7 x 3),
    uint8 (opset 17) and int32 (opset 11) plane sums; run unoptimized, so the decoder itself
    computes the weight, and after ORT's load-time folding."""
    book = _random_book(np.random.default_rng(bits * 7 + opset), shape, bits, layout, axis)
    model = _decoded(book, opset)
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        np.testing.assert_array_equal(session.run(None, {})[0], _lookup(book))
    gathers = [n for n in model.graph.node if "Gather" in n.op_type]
    assert [n.op_type for n in gathers] == ["GatherElements"]  # Gather folds ~5x slower
    decoder = find_decoders(model.graph)["W"]
    assert len(decoder.nodes) == len(model.graph.node)


def test_decoders_of_one_graph_share_their_small_constants():
    rng = np.random.default_rng(2)
    graph = helper.make_graph([], "g", [], [])
    names, shared = Names(graph), {}
    added = []
    for name in ("A", "B"):
        book = _random_book(rng, (32, 16, 1, 1), 3, "scaled", 0)
        before = len(graph.initializer)
        graph.node.extend(
            emit_decoder(graph, names, name, book, np.float32, opset=17, shared=shared)
        )
        added.append(len(graph.initializer) - before)
    # the second decoder adds only its own values: two index planes, book and scales
    assert added[1] == 4 < added[0]


@pytest.mark.parametrize("bits", [5, 8])  # 8: a table wider than a channel's 54 indices
def test_quant_reads_bits_indices_and_values_back_from_a_scaled_decoder(bits):
    from onnxopt.quantization.shared import materialize

    rng = np.random.default_rng(4)
    book = _random_book(rng, (8, 6, 3, 3), bits, "scaled", 0)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 3, 3])],
    )
    for position, node in enumerate(emit_decoder(graph, Names(graph), "W", book, np.float32)):
        graph.node.insert(position, node)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    plain, (weight,) = materialize(model)
    assert weight.bits == bits and weight.readers == [("conv", 1)]
    np.testing.assert_array_equal(weight.labels, book.labels.reshape(book.shape))
    values = next(t for t in plain.graph.initializer if t.name == "W")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(values), _lookup(book))


# --- the pass on exported models ------------------------------------------------------------


@pytest.fixture(scope="module")
def tied_lm_path(tmp_path_factory):
    from tests.zoo.transformer import make_tied_lm_onnx

    return make_tied_lm_onnx(tmp_path_factory.mktemp("tied") / "tied_lm.onnx")


def _ids_feed(batch: int = 3) -> dict[str, np.ndarray]:
    return {"ids": np.random.default_rng(0).integers(0, 500, (batch, 8)).astype(np.int64)}


def test_dedup_merges_repeated_and_transposed_weights_of_a_tied_export(tied_lm_path, tmp_path):
    before = onnx.load(tied_lm_path)
    result = api.optimize(tied_lm_path, tmp_path / "dedup.onnx", passes="share")
    stats = result.report.passes[0].stats
    assert stats["deduplicated"] == 1  # the block's weight, written once per use
    assert stats["transposed_copies"] == 1  # the head: the embedding table transposed
    after = onnx.load(tmp_path / "dedup.onnx")
    feed = _ids_feed()
    for a, b in zip(ort_outputs(before, feed), ort_outputs(after, feed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (tmp_path / "dedup.onnx").stat().st_size < 0.55 * tied_lm_path.stat().st_size
    # cleanup must not undo it (the Transpose is a view of a constant read twice)
    api.optimize(tmp_path / "dedup.onnx", tmp_path / "clean.onnx", passes="cleanup")
    size = (tmp_path / "clean.onnx").stat().st_size
    assert size <= (tmp_path / "dedup.onnx").stat().st_size + 256


def test_codebooks_shrink_digits_cnn_and_keep_accuracy(digits_model, digits_calib, tmp_path):
    val = np.load(digits_model.parent / "digits_val.npz")
    out = tmp_path / "digits4.onnx"
    result = api.optimize(
        digits_model,
        out,
        passes="cleanup,share{bits=4}",
        calib=digits_calib,
        val=digits_model.parent / "digits_val.npz",
    )
    stats = result.report.passes[1].stats
    assert stats["tensors"] and all(t["bits"] == 4 for t in stats["tensors"])
    assert stats["bytes_after"] < stats["bytes_before"] / 4
    assert stats["gzip_bytes_after"] < stats["gzip_bytes_before"]
    shared = sum(t["bytes_before"] for t in stats["tensors"])
    stored = sum(t["bytes_after"] for t in stats["tensors"])
    assert stored < shared / 6
    reference = ort_outputs(digits_model, {"input": val["input"]})[0]
    candidate = ort_outputs(out, {"input": val["input"]})[0]
    agreement = np.mean(reference.argmax(1) == candidate.argmax(1))
    assert agreement >= 0.98
    assert np.mean(candidate.argmax(1) == val["label"]) >= 0.97
    # the decoders are standard ops that ORT folds into plain weights at load
    ops = _optimized_ops(onnx.load(out), tmp_path)
    assert not {"Gather", "GatherElements", "BitShift"} & set(ops)


def test_data_aware_fit_beats_weight_only_fit(digits_model, digits_calib, tmp_path):
    val = np.load(digits_model.parent / "digits_val.npz")["input"][:200]
    reference = ort_outputs(digits_model, {"input": val})[0]
    errors = {}
    for aware in ("true", "false"):
        out = tmp_path / f"aware_{aware}.onnx"
        api.optimize(
            digits_model,
            out,
            passes=f"share{{bits=3,data_aware={aware},min_cosine=0}}",
            calib=digits_calib,
        )
        candidate = ort_outputs(out, {"input": val})[0]
        errors[aware] = float(np.mean((candidate - reference) ** 2))
    assert errors["true"] < 0.7 * errors["false"]


def test_target_ratio_meets_the_file_budget(digits_model, digits_calib, tmp_path):
    out = tmp_path / "ratio.onnx"
    api.optimize(
        digits_model, out, passes="share{target_ratio=5,min_elements=512}", calib=digits_calib
    )
    assert out.stat().st_size <= digits_model.stat().st_size / 5
    ratio_stats = (
        api.optimize(
            digits_model, None, passes="share{target_ratio=5,min_elements=512}", calib=digits_calib
        )
        .report.passes[0]
        .stats
    )
    assert len({t["bits"] for t in ratio_stats["tensors"]}) > 1  # bits differ per layer


@pytest.mark.parametrize(("bits", "inputs", "channels"), [(4, 64, 96), (8, 32, 192)])
def test_fixed_bits_takes_channel_scaled_books_for_channels_of_different_scale(
    bits, inputs, channels, tmp_path
):
    """Folded BatchNorm leaves output channels at very different scales; one book per tensor
    then wastes its values on the large channels, and the refit comparison must see that."""
    rng = np.random.default_rng(3)
    scales = np.geomspace(0.01, 1.0, channels)
    weight = (rng.standard_normal((inputs, channels)) * scales).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, channels])],
        [onnx.numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "scales.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((16, inputs)).astype(np.float32)
    errors = {}
    for granularity in ("auto", "tensor"):
        out = tmp_path / f"{granularity}.onnx"
        result = api.optimize(
            path,
            out,
            passes=f"share{{bits={bits},granularity={granularity},min_cosine=0}}",
            calib="random",
        )
        (tensor,) = result.report.passes[0].stats["tensors"]
        errors[granularity] = (tensor["codebooks"], ort_outputs(out, {"x": x})[0])
    reference = x @ weight
    relative = {
        g: float(np.sum((y - reference) ** 2) / np.sum(reference**2))
        for g, (_, y) in errors.items()
    }
    assert errors["auto"][0].startswith("scaled")
    assert relative["auto"] < 0.5 * relative["tensor"]


def test_constants_read_as_non_weights_are_left_alone(tmp_path):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 64)).astype(np.float32)
    offset = rng.standard_normal((64,)).astype(np.float32)  # read by Add: not a weight
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("Add", ["h", "B"], ["y"]),
            helper.make_node("MatMul", ["x", "S"], ["z"]),
            helper.make_node("Add", ["z", "S2"], ["w"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 64]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 64]),
        ],
        [
            onnx.numpy_helper.from_array(big, "W"),
            onnx.numpy_helper.from_array(offset, "B"),
            onnx.numpy_helper.from_array(big * 2, "S"),
            onnx.numpy_helper.from_array(np.tile(offset, (2, 1)) * 3, "S2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "mixed.onnx"
    onnx.save(model, path)
    result = api.optimize(
        path, tmp_path / "out.onnx", passes="share{bits=4,min_elements=64}", calib="random"
    )
    stats = result.report.passes[0].stats
    assert sorted(t["tensor"] for t in stats["tensors"]) == ["S", "W"]
    out = onnx.load(tmp_path / "out.onnx")
    kept = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    np.testing.assert_array_equal(kept["B"], offset)
    assert any("'B'" in reason and "Add" in reason for reason in result.report.passes[0].skipped)


@pytest.mark.parametrize("first", ["cleanup,", ""], ids=["folded", "bn-folded-by-quant"])
def test_share_then_quant_keeps_int8_codebooks_that_ort_fuses(
    first, digits_model, digits_calib, tmp_path
):
    """Without cleanup first, quant's own preparation folds BatchNorm into the shared weights
    (renaming them): they must still skip GPTQ and stay codebooks."""
    out = tmp_path / "sq.onnx"
    result = api.optimize(
        digits_model,
        out,
        passes=f"{first}share{{bits=4}},quant",
        calib=digits_calib,
        val=digits_model.parent / "digits_val.npz",
    )
    quant = result.report.passes[-1]
    assert not [reason for reason in quant.skipped if "stored plain" in reason]
    model = onnx.load(out)
    decoders = find_decoders(model.graph)
    assert len(decoders) == quant.stats["codebook_weights"] == 4
    tables = [evaluate_decoder(model, d)[2] for d in decoders.values()]
    assert all(table.dtype == np.int8 for table in tables)
    # the three convolutions' books, one normalized book times channel scales, give every
    # output channel the same int8 codes: one 16-entry book each
    assert sorted(table.shape for table in tables)[:3] == [(1, 16)] * 3
    ops = _optimized_ops(model, tmp_path)
    assert "QLinearConv" in ops and not {"Gather", "GatherElements"} & set(ops)
    quant_only = tmp_path / "q.onnx"
    api.optimize(digits_model, quant_only, passes="cleanup,quant", calib=digits_calib)

    def payload(path):
        return sum(len(t.raw_data) for t in onnx.load(path).graph.initializer)

    assert payload(out) < 0.7 * payload(quant_only)
    assert out.stat().st_size < 0.85 * quant_only.stat().st_size
    val = np.load(digits_model.parent / "digits_val.npz")
    candidate = ort_outputs(out, {"input": val["input"]})[0]
    assert np.mean(candidate.argmax(1) == val["label"]) >= 0.97


# --- refusals --------------------------------------------------------------------------------


def test_bits_and_target_ratio_together_is_an_option_error(digits_model, tmp_path):
    result = run_cli(
        "optimize",
        digits_model,
        "--passes",
        "share{bits=4,target_ratio=4}",
        "-o",
        tmp_path / "x.onnx",
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not both" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def _two_matmuls(tmp_path, opset: int):
    weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("MatMul", ["y", "V"], ["z"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 64])],
        [onnx.numpy_helper.from_array(weight, "W"), onnx.numpy_helper.from_array(weight, "V")],
    )
    path = tmp_path / f"old{opset}.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4
    onnx.save(model, path)
    return path


def test_codebooks_upgrade_an_opset_9_model_and_refuse_below_7_but_dedup_runs(tmp_path):
    path = _two_matmuls(tmp_path, 9)
    upgraded = run_cli("optimize", path, "--passes", "share{bits=4}", "-o", tmp_path / "a.onnx")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "upgrade{opset=11} (for share)" in upgraded.stdout
    assert onnx.load(tmp_path / "a.onnx").opset_import[0].version == 11
    old = _two_matmuls(tmp_path, 6)
    refused = run_cli("optimize", old, "--passes", "share{bits=4}", "-o", tmp_path / "c.onnx")
    assert refused.returncode == 2 and "opset >= 11" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0
    plain = run_cli("optimize", old, "--passes", "share", "-o", tmp_path / "b.onnx")
    assert plain.returncode == 0, plain.stderr
    assert len(onnx.load(tmp_path / "b.onnx").graph.initializer) == 1


def test_held_out_factor_flags_a_layer_fit_from_fewer_rows_than_inputs():
    """A layer fit from fewer rows than inputs promises an error that unseen rows do not get;
    the two-fold check measures by how much (a conv with many rows per input is not checked)."""
    from onnxopt.analyses.input_moments import input_hessians
    from onnxopt.analyses.weights import find_weights
    from onnxopt.data.sources import open_data
    from onnxopt.sharing.fit import LayerModel
    from onnxopt.sharing.holdout import few_row_weights, optimism

    rng = np.random.default_rng(5)
    weight = rng.standard_normal((128, 64)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 64])],
        [onnx.numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    mixing = rng.standard_normal((128, 128)) * np.geomspace(1.0, 0.01, 128)
    feeds = [{"x": (rng.standard_normal((8, 128)) @ mixing).astype(np.float32)} for _ in range(8)]
    data = open_data(feeds, model)
    (found,) = find_weights(model, 64).weights
    moments = input_hessians(model, [found.layer], data, 64, "cpu")[found.layer.node]
    layers = {"W": LayerModel(found, moments)}
    assert few_row_weights(layers) == [found]
    factors = optimism(model, [found], data, 64, 3, 10, "cpu")
    assert factors["W"] > 1.2
