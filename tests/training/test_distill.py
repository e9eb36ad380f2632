"""The `distill` pass end to end on the digits CNN: it recovers what pruning and quantization
lost (real labels, held-out digits), keeps the layout, is reproducible, and declines cleanly."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from onnxopt.api import optimize
from tests.conftest import float_model, run_cli

FAST = "distill{epochs=3,batch_size=32}"


@pytest.fixture(scope="module")
def digits_split(tmp_path_factory):
    """The bundled model's split of scikit-learn's digits: calib.npz holds the 1257 training
    images (unlabeled, as a user would have them), the 540 test images keep their labels."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, _, y_test = train_test_split(
        images, digits.target, test_size=0.3, stratify=digits.target, random_state=0)
    calib = tmp_path_factory.mktemp("digits") / "calib.npz"
    np.savez(calib, input=x_train)
    return calib, x_test, y_test


def accuracy(model_path, split) -> float:
    _, images, labels = split
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": images})[0].argmax(1) == labels).mean())


def layout(model: onnx.ModelProto) -> list[tuple]:
    """Nodes (op, inputs, outputs) and constants (name, dtype, shape): what must not change."""
    nodes = [(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]
    constants = [(t.name, t.data_type, tuple(t.dims)) for t in model.graph.initializer]
    return nodes + constants


BROKEN = "prune{ratio=0.5,reconstruct=false,min_cosine=0},quant{min_cosine=0}"
"""Half the channels gone and no refit: about 10 % on the test digits, chance level."""


@pytest.fixture(scope="module")
def broken(digits_model, digits_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "broken.onnx"
    optimize(digits_model, out, passes=BROKEN, calib=digits_split[0])
    return out


@pytest.fixture(scope="module")
def recovered(digits_model, digits_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "recovered.onnx"
    result = optimize(digits_model, out, calib=digits_split[0], seed=5,
                      passes=f"{BROKEN},distill{{epochs=4,lr=5e-3,min_cosine=0}}")
    return out, result.report


def test_distill_recovers_a_broken_student_on_held_out_digits(broken, recovered, digits_split):
    path, report = recovered
    record = report.passes[-1]
    assert record.name == "distill" and record.status == "changed", record.skipped
    before, after = accuracy(broken, digits_split), accuracy(path, digits_split)
    assert before < 0.3 and after >= 0.9, (before, after)
    stats = record.stats
    assert stats["trained"]["fake_quant"] > 0 and stats["trained"]["log_scale"] > 0
    assert stats["early_stop_after"]["top1"] > stats["early_stop_before"]["top1"]
    runtime = stats["onnxruntime_early_stop"]
    assert runtime["after"]["top1"] > runtime["before"]["top1"]
    features = stats["features"]  # the pruned student's thinned tensors pair with the teacher's
    assert 1 <= features["used"] <= features["paired"] <= features["candidates"], features
    assert stats["augment"] is False  # auto: a pruned student trains on the samples as they are


def test_distill_keeps_the_quantized_layout(broken, recovered):
    path, _ = recovered
    assert layout(onnx.load(path)) == layout(onnx.load(broken))


def test_distill_is_reproducible(digits_model, digits_split, recovered, tmp_path):
    path, _ = recovered
    again = tmp_path / "again.onnx"
    optimize(digits_model, again, calib=digits_split[0], seed=5,
             passes=f"{BROKEN},distill{{epochs=4,lr=5e-3,min_cosine=0}}")
    assert again.read_bytes() == path.read_bytes()


def test_pruned_quantized_distilled_digits_keep_99_percent(digits_model, digits_split, tmp_path):
    out = tmp_path / "pqd.onnx"
    result = optimize(digits_model, out, passes=f"prune{{ratio=0.5}},quant,{FAST}",
                      calib=digits_split[0])
    assert [p.name for p in result.report.passes][-1] == "distill"
    assert accuracy(out, digits_split) >= 0.99


def test_distill_declines_an_op_it_cannot_run(tmp_path):
    node = onnx.helper.make_node("Det", ["m"], ["d"], name="det")
    mul = onnx.helper.make_node("MatMul", ["x", "w"], ["m"], name="mm")
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32)[None].repeat(2, 0), "w")
    model = float_model([mul, node], [("x", ["n", 2, 4, 4])], [("d", ["n", 2])], [w])
    source = tmp_path / "det.onnx"
    onnx.save(model, source)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((80, 2, 4, 4)).astype(np.float32))
    result = optimize(source, tmp_path / "out.onnx", passes="distill", calib=calib)
    record = result.report.passes[0]
    assert record.status == "unchanged" or not record.status.startswith("changed")
    assert any("Det" in reason for reason in record.skipped)
    assert (tmp_path / "out.onnx").exists()


def test_distill_without_torch_exits_2_naming_the_install(tmp_path, digits_model, digits_calib,
                                                          monkeypatch):
    from onnxopt.passes import distill

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(Exception, match=r"pip install 'onnxopt\[distill\]'") as info:
        distill.DistillPass().check_applicable(onnx.load(digits_model),
                                               _context(digits_calib, digits_model))
    assert getattr(info.value, "exit_code", 2) == 2


def _context(calib, model):
    from onnxopt.data.sources import open_data
    from onnxopt.infra.pass_base import PassContext

    return PassContext(calibration=open_data(calib, onnx.load(model)))


def test_cli_reports_distill(tmp_path, digits_model, digits_calib):
    report = tmp_path / "r.json"
    done = run_cli("optimize", digits_model, "--passes", "distill{epochs=1,max_seconds=20}",
                   "--calib", digits_calib, "-o", tmp_path / "o.onnx", "--report", report)
    assert done.returncode == 0, done.stderr
    record = json.loads(report.read_text())["passes"][0]
    assert record["name"] == "distill"
    assert "early_stop_before" in record["stats"]
    assert record["stats"]["augment"] is True  # auto: a full-width student trains augmented


def _static_matmul(tmp_path):
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), "w")
    model = float_model([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [3, 4])],
                        [("y", [3, 5])], [weight])
    path = tmp_path / "static.onnx"
    onnx.save(model, path)
    return path


def test_distill_trains_a_static_batch_model_in_its_own_batch(tmp_path):
    source = _static_matmul(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((90, 4)).astype(np.float32))
    result = optimize(source, tmp_path / "o.onnx", calib=calib,
                      passes="quant,distill{epochs=2,max_seconds=30}")
    record = result.report.passes[-1]
    assert record.name == "distill" and record.status in ("changed", "unchanged")
    assert record.stats["samples_early_stop"] % 3 == 0


def test_distill_declines_too_few_samples(tmp_path):
    source = _static_matmul(tmp_path)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32))
    result = optimize(source, tmp_path / "o.onnx", calib=calib, passes="distill")
    record = result.report.passes[-1]
    assert record.status == "unchanged"
    assert any("at least 8 calibration samples" in reason for reason in record.skipped)


def test_patience_counts_only_once_half_the_schedule_has_run(digits_model, digits_split,
                                                              tmp_path):
    """A student that is its teacher never improves: with patience 1 over 6 epochs it stops
    after the third (the first to end at half the schedule), not after the first."""
    result = optimize(digits_model, tmp_path / "same.onnx", calib=digits_split[0],
                      passes="distill{teacher=previous,epochs=6,patience=1,batch_size=64}")
    record = result.report.passes[-1]
    assert record.status == "unchanged"
    assert record.stats["epochs"] == 3, record.stats["history"]


def test_distill_trains_a_dynamic_int8_transformer(transformer_path, tmp_path):
    """quant writes the transformer's MatMuls as dynamic int8 (MatMulInteger); distill trains
    their int8 weights in place. A student pruned without refit: distill keeps its layout and
    cuts its error on sequences it did not train on (measured: 0.036 -> 0.007)."""
    rng = np.random.default_rng(8)
    calib, held_out = tmp_path / "calib.npz", rng.standard_normal((200, 16, 32))
    np.savez(calib, input=rng.standard_normal((256, 16, 32)).astype(np.float32))
    student = "prune{ratio=0.3,reconstruct=false,min_cosine=0},quant{min_cosine=0}"
    quant, distilled = tmp_path / "q.onnx", tmp_path / "qd.onnx"
    optimize(transformer_path, quant, passes=student, calib=calib, seed=0)
    result = optimize(transformer_path, distilled, calib=calib, seed=0,
                      passes=f"{student},distill{{epochs=3,lr=5e-3,min_cosine=0}}")
    record = result.report.passes[-1]
    assert record.status == "changed", record.skipped
    layers = [n for n in onnx.load(quant).graph.node if n.op_type == "MatMulInteger"]
    assert record.stats["trained"]["fake_quant"] == len(layers) > 0
    assert layout(onnx.load(distilled)) == layout(onnx.load(quant))

    def error(path) -> float:
        feed = {"input": held_out.astype(np.float32)}
        want = ort.InferenceSession(str(transformer_path)).run(None, feed)[0]
        got = ort.InferenceSession(str(path)).run(None, feed)[0]
        return float(np.square(got - want).sum() / np.square(want).sum())

    assert error(distilled) < 0.5 * error(quant), (error(distilled), error(quant))
