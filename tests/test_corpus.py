"""The onnx backend test corpus run (tests/corpus): the judge, the runner, the whole corpus.

The full run downloads the onnx 1.22.0 wheel once (see tests/corpus/fetch.py) and takes a few
minutes on 2 cores; deselect it with `-m "not slow"`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import REPO
from tests.corpus.worker import ACCEPTED, FAILURES, judge

CORPUS_TIMEOUT_S = 1500


def _scale_model(factor: float, output: str = "y") -> onnx.ModelProto:
    """y = x * factor, with the factor as an initializer."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], [output])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(factor, np.float32), "k")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((2, 3)).astype(np.float32)}]


def _judge_output(tmp_path: Path, candidate: onnx.ModelProto, changed: list[str]):
    model, output, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(_scale_model(2.0), model)
    onnx.save(candidate, output)
    passes = [{"name": name, "status": "changed"} for name in changed]
    report.write_text(json.dumps({"passes": passes}))
    return judge(0, "", model, output, report, _feeds())


def test_judge_exit_codes_and_stderr(tmp_path):
    model, output, report = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(_scale_model(2.0), model)

    def outcome(code, stderr):
        return judge(code, stderr, model, output, report, _feeds())[0]

    assert outcome(2, "error: bad input") == "refusal"
    assert outcome(2, "WARNING onnxopt.data.sources: using random inputs\nerror: bad") == "refusal"
    assert outcome(2, "[E:onnxruntime:, session.cc] failed\nerror: bad") == "unclean"
    assert outcome(2, "error: one\nerror: two") == "unclean"
    assert outcome(2, "") == "unclean"
    assert outcome(1, "internal error: KeyError: 0 (rerun with -v)") == "traceback"
    assert outcome(2, "Traceback (most recent call last):\nerror: x") == "traceback"
    assert outcome(-11, "") == "traceback"
    assert outcome(None, "") == "timeout"
    assert outcome(0, "") == "invalid"  # exit 0 without an output file
    onnx.save(_scale_model(2.0), output)
    assert outcome(2, "error: bad input") == "invalid"  # a refusal must leave no output


def test_judge_unchanged_ok_and_mismatch(tmp_path):
    same = _scale_model(2.0)
    helper.set_model_props(same, {"onnxopt.pipeline": "cleanup"})
    assert _judge_output(tmp_path, same, [])[0] == "unchanged"
    assert _judge_output(tmp_path, _scale_model(2.000002), ["cleanup"])[0] == "ok"
    outcome, detail = _judge_output(tmp_path, _scale_model(2.01), ["cleanup"])
    assert outcome == "mismatch" and "max rel error" in detail
    # A cosine promise tolerates a scale change but not a sign flip.
    assert _judge_output(tmp_path, _scale_model(2.5), ["quant"])[0] == "ok"
    assert _judge_output(tmp_path, _scale_model(-2.0), ["quant"])[0] == "mismatch"


def test_judge_invalid_outputs(tmp_path):
    outcome, detail = _judge_output(tmp_path, _scale_model(2.0, output="z"), ["cleanup"])
    assert outcome == "invalid" and "outputs changed" in detail
    broken = _scale_model(2.0)
    broken.graph.node[0].input[1] = "missing"
    outcome, detail = _judge_output(tmp_path, broken, ["cleanup"])
    assert outcome == "invalid" and "checker" in detail


def _write_case(root: Path, name: str, model: onnx.ModelProto, inputs: list) -> None:
    case = root / "node" / name
    (case / "test_data_set_0").mkdir(parents=True)
    onnx.save(model, case / "model.onnx")
    for index, value in enumerate(inputs):
        proto = (
            numpy_helper.from_list(value, name="seq")
            if isinstance(value, list)
            else numpy_helper.from_array(value)
        )
        (case / "test_data_set_0" / f"input_{index}.pb").write_bytes(proto.SerializeToString())


def _mini_corpus(root: Path) -> dict[str, str]:
    """Cases with known outcomes under the default passes."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    identity = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["t"]),
            helper.make_node("Add", ["t", "x"], ["y"]),
        ],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    relu = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    seq_type = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)
    sequence = helper.make_graph(
        [helper.make_node("SequenceLength", ["seq"], ["n"])],
        "sequence",
        [seq_type],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [])],
    )
    matmul = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    opset = [helper.make_opsetid("", 17)]
    for name, graph, inputs in (
        ("test_identity", identity, [x]),
        ("test_relu", relu, [x]),
        ("test_sequence", sequence, [[x, x]]),
        ("test_matmul", matmul, [x, w]),
    ):
        _write_case(root, name, helper.make_model(graph, opset_imports=opset, ir_version=8), inputs)
    return {
        "node/test_identity": "ok",
        "node/test_relu": "unchanged",
        "node/test_sequence": "refusal",
        "node/test_matmul": "unchanged",  # its weight is an input: nothing to quantize
        "node/test_matmul@frozen": "ok",  # the weight frozen into an initializer: quantized
    }


def _run_corpus(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "tests.corpus.run_corpus", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_runner_on_a_mini_corpus(tmp_path):
    expected = _mini_corpus(tmp_path / "corpus")
    summary = tmp_path / "summary.json"
    done = _run_corpus(
        "--corpus", str(tmp_path / "corpus"), "--jobs", "2", "--summary", str(summary), timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(summary.read_text())["results"]
    assert {r["case"]: r["outcome"] for r in results} == expected
    by_case = {r["case"]: r for r in results}
    assert "is a sequence, not a tensor" in by_case["node/test_sequence"]["detail"]
    assert by_case["node/test_matmul@frozen"]["detail"] == "quant"


@pytest.mark.slow
def test_backend_corpus_every_pass(tmp_path):
    """Every pass on every model of the onnx backend test data, and on its variants (weights
    frozen, old opsets converted): ok, unchanged or a clean refusal (or, for models ORT itself
    cannot run, unchanged or refused); never a traceback, a hang, an unclean refusal, an
    invalid output or a numeric mismatch."""
    from tests.corpus.fetch import corpus_dir, model_dirs

    root = corpus_dir()
    total = len(model_dirs(root))
    assert total > 1500, f"the corpus at {root} holds only {total} models"
    summary_path = tmp_path / "corpus.json"
    jobs = str(os.cpu_count() or 1)
    done = _run_corpus(
        "--jobs", jobs, "--summary", str(summary_path), "--show", "failures",
        timeout=CORPUS_TIMEOUT_S,
    )  # fmt: skip
    summary = json.loads(summary_path.read_text())
    counts, variants = summary["counts"], summary["variant_counts"]
    failed = {k: counts.get(k, 0) + variants.get(k, 0) for k in FAILURES}
    assert not any(failed.values()), f"{failed}\n{done.stdout[-6000:]}"
    assert sum(counts.get(k, 0) for k in ACCEPTED) == summary["models"] == total, counts
    made = sum(variants.get(k, 0) for k in ACCEPTED)
    assert made + variants.get("skipped", 0) == summary["variant_runs"], variants
    assert made > 200, variants
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
