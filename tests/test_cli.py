"""The installed console script, run as a subprocess: the happy path and every bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import ort_outputs, random_feed, run_cli


def _assert_one_line_error(result, fragment: str, code: int = 2):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]


def test_optimize_cnn_end_to_end(convbnrelu_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli(
        "optimize", convbnrelu_path, "-o", out, "--passes", "cleanup", "--report", report
    )
    assert result.returncode == 0, result.stderr
    assert "cleanup" in result.stdout and "changed" in result.stdout
    data = json.loads(report.read_text())
    assert data["passes"][0]["status"] == "changed"
    before, after = onnx.load(convbnrelu_path), onnx.load(out)
    assert not any(n.op_type == "BatchNormalization" for n in after.graph.node)
    feed = random_feed(before, seed=7, batch=3)
    ref, got = ort_outputs(before, feed)[0], ort_outputs(after, feed)[0]
    assert np.abs(ref - got).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_optimize_with_config_and_validation_data(digits_model, tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text("passes:\n  - cleanup: {fold_limit_mb: 16}\n")
    out = tmp_path / "digits.opt.onnx"
    val = digits_model.parent / "digits_val.npz"
    inputs_only = tmp_path / "val_inputs.npz"
    with np.load(val) as archive:
        np.savez(inputs_only, input=archive["input"][:64])
    result = run_cli("optimize", digits_model, "-o", out, "--config", config, "--val", inputs_only)
    assert result.returncode == 0, result.stderr
    assert "fidelity measured on --val: val_inputs.npz (64 samples)" in result.stdout


def test_optimize_labels_in_sample_fidelity(digits_model, tmp_path):
    calib = tmp_path / "few.npz"
    with np.load(digits_model.parent / "digits_calib.npz") as archive:
        np.savez(calib, input=archive["input"][:40])
    out = tmp_path / "digits.opt.onnx"
    result = run_cli("optimize", digits_model, "-o", out, "--passes", "quant", "--calib", calib)
    assert result.returncode == 0, result.stderr
    assert "fidelity measured on in-sample: few.npz has 40 samples" in result.stdout
    assert "warning: these fidelity numbers are in-sample" in result.stdout


def test_passes_lists_options():
    result = run_cli("passes")
    assert result.returncode == 0
    assert "cleanup:" in result.stdout and "fold_limit_mb (float, default 64.0)" in result.stdout
    listed = json.loads(run_cli("passes", "--json").stdout)
    assert any(entry["name"] == "cleanup" for entry in listed)


def test_help_has_examples():
    result = run_cli("optimize", "--help")
    assert "Examples:" in result.stdout and "--passes 'cleanup{" in result.stdout


@pytest.fixture
def model_copy(convbnrelu_path, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(convbnrelu_path.read_bytes())
    return path


def test_missing_file(tmp_path):
    result = run_cli("optimize", tmp_path / "absent.onnx", "-o", tmp_path / "o.onnx")
    _assert_one_line_error(result, "model file not found")
    assert not (tmp_path / "o.onnx").exists()


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("definitely not protobuf")
    result = run_cli("optimize", bad, "-o", tmp_path / "o.onnx")
    _assert_one_line_error(result, "not a valid ONNX model")
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_protobuf(model_copy, tmp_path):
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 3])
    result = run_cli("optimize", model_copy, "-o", tmp_path / "o.onnx")
    _assert_one_line_error(result, "not a valid ONNX model")


def test_missing_external_data(convbnrelu_path, tmp_path):
    model = onnx.load(convbnrelu_path)
    onnx.save_model(
        model,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    (tmp_path / "ext.data").unlink()
    result = run_cli("optimize", tmp_path / "ext.onnx", "-o", tmp_path / "o.onnx")
    _assert_one_line_error(result, "external data file 'ext.data'")


def test_output_is_input(model_copy):
    before = model_copy.read_bytes()
    result = run_cli("optimize", model_copy, "-o", model_copy)
    _assert_one_line_error(result, "refusing to overwrite the input model")
    assert model_copy.read_bytes() == before


def test_report_is_input(model_copy, tmp_path):
    before = model_copy.read_bytes()
    result = run_cli("optimize", model_copy, "-o", tmp_path / "o.onnx", "--report", model_copy)
    _assert_one_line_error(result, "refusing to overwrite the input model")
    assert model_copy.read_bytes() == before
    assert not (tmp_path / "o.onnx").exists()


def test_output_directory_not_writable(model_copy, tmp_path, monkeypatch):
    # The suite runs as root in CI, where chmod cannot make a folder unwritable: fake the check.
    from onnxopt import api
    from onnxopt.errors import InputError

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(locked) else real_access(p, mode)
    )
    with pytest.raises(InputError, match="output directory is not writable"):
        api.optimize(model_copy, locked / "o.onnx")
    assert list(locked.iterdir()) == []


def test_output_directory_missing(model_copy, tmp_path):
    result = run_cli("optimize", model_copy, "-o", tmp_path / "nowhere" / "o.onnx")
    _assert_one_line_error(result, "output directory does not exist")


def test_unknown_pass(model_copy, tmp_path):
    result = run_cli("optimize", model_copy, "-o", tmp_path / "o.onnx", "--passes", "cleanup,fancy")
    _assert_one_line_error(result, "unknown pass 'fancy' (available passes: cleanup")


def test_bad_option(model_copy, tmp_path):
    result = run_cli(
        "optimize", model_copy, "-o", tmp_path / "o.onnx", "--passes", "cleanup{fold_bn=perhaps}"
    )
    _assert_one_line_error(result, "cleanup{fold_bn=perhaps}: expected true or false")


def test_opset_too_old(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    old = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    old.ir_version = 3
    path = tmp_path / "old.onnx"
    onnx.save(old, path)
    result = run_cli("optimize", path, "-o", tmp_path / "o.onnx", "--passes", "cleanup")
    _assert_one_line_error(result, "pass 'cleanup' needs opset >= 7, the model has opset 6")
    assert not (tmp_path / "o.onnx").exists()


def test_bad_calibration_file(model_copy, tmp_path):
    data = tmp_path / "calib.npz"
    np.savez(data, wrong_name=np.zeros((2, 3, 32, 32), np.float32))
    result = run_cli("optimize", model_copy, "-o", tmp_path / "o.onnx", "--val", data)
    _assert_one_line_error(result, "missing input 'input'")


def test_cuda_absent_is_one_line(model_copy, tmp_path):
    result = run_cli("optimize", model_copy, "-o", tmp_path / "o.onnx", "--provider", "cuda")
    _assert_one_line_error(result, "CUDAExecutionProvider is not available")
    assert not (tmp_path / "o.onnx").exists()


def test_internal_error_exits_1_with_hint(model_copy, tmp_path):
    from click.testing import CliRunner

    import tests.infra.test_manager  # noqa: F401  (registers the crashing test pass)
    from onnxopt.cli import main

    result = CliRunner().invoke(
        main,
        ["optimize", str(model_copy), "-o", str(tmp_path / "o.onnx"), "--passes", "test-crash"],
    )
    assert result.exit_code == 1
    assert "internal error: PassCrashed" in result.output and "rerun with -v" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_sigterm_leaves_no_partial_output(convbnrelu_path, tmp_path):
    import signal

    from click.testing import CliRunner

    import tests.infra.test_manager  # noqa: F401  (registers the test pass that signals itself)
    from onnxopt.cli import main

    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    out.mkdir()
    try:
        result = CliRunner().invoke(
            main,
            [
                "optimize",
                str(convbnrelu_path),
                "-o",
                str(out / "o.onnx"),
                "--passes",
                "cleanup,test-sigterm",
            ],
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert result.exit_code == 130
    assert "interrupted: no output written" in result.output
    assert list(out.iterdir()) == []
