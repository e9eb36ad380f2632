"""`optimize` as a deployment build step: the default output, one-sample data files, -q/-v
after the command, --bench, the gates (--min-top1, --min-cosine, --min-speedup, --max-size),
--keep-failed and the Markdown report."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess

import numpy as np
import onnx
import pytest

from tests.conftest import REPO, cli_command, ort_outputs, run_cli
from tests.test_cli import _assert_one_line_error

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'
VAD_LIKE = (
    "vad (float[N, S] x, float[2, N, 128] state, int64 sr) => (float[2, N, 128] out) {\n"
    "  s = Cast<to=1>(sr)\n  scale = Div(s, s)\n  e = ReduceMean<keepdims=0>(x)\n"
    "  t = Mul(e, scale)\n  out = Add(state, t)\n}"
)
MATMUL = "mm (float[2, 5] a, float[5, 3] b) => (float[2, 3] y) { y = MatMul(a, b) }"


def _parsed(tmp_path, text: str, name: str):
    model = onnx.parser.parse_model(HEADER + text)
    model.ir_version = 10
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.fixture
def digits_copy(digits_model, tmp_path):
    path = tmp_path / "digits.onnx"
    path.write_bytes(digits_model.read_bytes())
    return path


# --- the output path ----------------------------------------------------------------------


def test_output_defaults_to_model_opt_onnx_beside_the_input(digits_copy):
    before = digits_copy.read_bytes()
    result = run_cli("optimize", digits_copy, "--passes", "cleanup")
    assert result.returncode == 0, result.stderr
    out = digits_copy.parent / "digits.opt.onnx"
    assert out.is_file() and f"output: {out}" in result.stdout
    assert digits_copy.read_bytes() == before
    assert onnx.load(out).metadata_props  # a model onnxopt wrote


def test_existing_default_output_is_refused_without_force(digits_copy):
    out = digits_copy.parent / "digits.opt.onnx"
    out.write_bytes(b"precious")
    result = run_cli("optimize", digits_copy, "--passes", "cleanup")
    _assert_one_line_error(result, f"{out} exists already; pass --force")
    assert out.read_bytes() == b"precious"
    forced = run_cli("optimize", digits_copy, "--passes", "cleanup", "--force", "-q")
    assert forced.returncode == 0, forced.stderr
    assert onnx.load(out).graph.node  # overwritten with a model


def test_mission_command_runs_as_typed_on_the_bundled_image_folder(digits_copy):
    images = REPO / "examples" / "digits_images"
    result = run_cli("optimize", digits_copy, "--passes", "prune,quant", "--calib", f"{images}/")
    assert result.returncode == 0, result.stderr
    assert "fidelity measured on holdout: 32 of 128 samples of digits_images/" in result.stdout
    closing = next(line for line in result.stdout.splitlines() if line.startswith("output:"))
    assert float(closing.split("top1 ")[1].rstrip("%")) >= 95.0  # the model's own scaling
    bad = run_cli(
        "optimize", digits_copy, "--passes", "cleanup", "--calib", images, "--preprocess", "x=1"
    )
    _assert_one_line_error(bad, "x")


def test_help_documents_every_data_form_and_the_mission_command():
    text = run_cli("optimize", "--help").stdout
    flat = " ".join(text.split())
    assert "onnxopt optimize model.onnx --passes prune,quant --calib images/" in flat
    for form in (
        "stacked on axis 0",
        "exactly one sample",
        "folder of such .npz/.npy",
        "folder of images",
        "'random'",
        "MODEL.opt.onnx",
        "--keep-failed",
        "3MB",
    ):
        assert form in flat, form


# --- one-sample data files ----------------------------------------------------------------


def test_one_sample_npz_with_a_scalar_input_runs_cleanup(tmp_path):
    model = _parsed(tmp_path, VAD_LIKE, "vad.onnx")
    rng = np.random.default_rng(0)
    sample = {
        "x": rng.standard_normal((1, 512)).astype(np.float32),
        "state": rng.standard_normal((2, 1, 128)).astype(np.float32),
        "sr": np.array(16000, dtype=np.int64),
    }
    np.savez(tmp_path / "one.npz", **sample)
    out = tmp_path / "vad.opt.onnx"
    result = run_cli("optimize", model, "--passes", "cleanup", "--calib", tmp_path / "one.npz")
    assert result.returncode == 0, result.stderr
    assert "one.npz (one sample)" in result.stdout
    np.testing.assert_allclose(
        ort_outputs(out, sample)[0], ort_outputs(model, sample)[0], rtol=1e-6, atol=1e-6
    )


def test_one_sample_npz_with_different_leading_dims_runs_cleanup(tmp_path):
    model = _parsed(tmp_path, MATMUL, "mm.onnx")
    rng = np.random.default_rng(1)
    sample = {
        "a": rng.standard_normal((2, 5)).astype(np.float32),
        "b": rng.standard_normal((5, 3)).astype(np.float32),
    }
    np.savez(tmp_path / "one.npz", **sample)
    result = run_cli("optimize", model, "--calib", tmp_path / "one.npz", "-o", tmp_path / "o.onnx")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(
        ort_outputs(tmp_path / "o.onnx", sample)[0], sample["a"] @ sample["b"], rtol=1e-5
    )


def test_npz_fitting_neither_reading_is_one_line_naming_the_shapes(tmp_path):
    model = _parsed(tmp_path, MATMUL, "mm.onnx")
    np.savez(tmp_path / "bad.npz", a=np.zeros((2, 5), np.float32), b=np.zeros((4, 3), np.float32))
    result = run_cli("optimize", model, "--calib", tmp_path / "bad.npz", "-o", tmp_path / "o.onnx")
    _assert_one_line_error(result, "inputs have different sample counts [2, 4]")
    assert "the model expects a float32[2,5], b float32[5,3]" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


# --- -q / -v after the command ------------------------------------------------------------


def test_quiet_after_the_command_means_what_it_means_before(digits_copy):
    after = run_cli(
        "optimize", digits_copy, "--passes", "cleanup", "-o", "a.onnx", "-q", cwd=digits_copy.parent
    )
    before = run_cli(
        "-q", "optimize", digits_copy, "--passes", "cleanup", "-o", "b.onnx", cwd=digits_copy.parent
    )
    assert after.returncode == before.returncode == 0, after.stderr
    assert after.stdout == before.stdout == ""
    assert (digits_copy.parent / "a.onnx").read_bytes() == (
        digits_copy.parent / "b.onnx"
    ).read_bytes()


def test_verbose_after_the_command_logs_info(digits_copy):
    result = run_cli("inspect", digits_copy, "-v")
    quiet = run_cli("inspect", digits_copy)
    assert result.returncode == 0 and quiet.returncode == 0
    assert "INFO" not in quiet.stderr
    optimize = run_cli("optimize", digits_copy, "--passes", "cleanup", "--force", "-v")
    assert optimize.returncode == 0, optimize.stderr
    assert "INFO onnxopt" in optimize.stderr


# --- --bench and the gates ----------------------------------------------------------------


@pytest.fixture
def build(digits_copy, digits_calib):
    def run(*args: str):
        report = digits_copy.parent / "report.json"
        out = digits_copy.parent / "out.onnx"
        for stale in (report, out):
            stale.unlink(missing_ok=True)
        result = run_cli(
            "optimize", digits_copy, "-o", out, "--report", report, "--calib", digits_calib, *args
        )
        data = json.loads(report.read_text()) if report.exists() else None
        return result, out, data

    return run


def test_bench_puts_speedup_size_and_macs_ratios_in_summary_and_report(build):
    result, out, data = build("--passes", "prune,quant", "--bench")
    assert result.returncode == 0, result.stderr
    ratios, before, after = data["ratios"], data["before"], data["after"]
    assert ratios["size"] == pytest.approx(after["bytes"] / before["bytes"])
    assert ratios["macs"] == pytest.approx(after["macs"] / before["macs"])
    assert ratios["size"] < 0.5 and ratios["macs"] < 1.0  # pruned and int8
    assert ratios["speedup"] == pytest.approx(1 / ratios["latency"]) and ratios["speedup"] > 0
    bench = data["bench"]
    assert bench["runs"] == 100 and bench["input_p50_ms"] > 0 and bench["output_p50_ms"] > 0
    assert f"MACs {ratios['macs']:.3f}x" in result.stdout
    assert f"speed-up {ratios['speedup']:.2f}x (measured)" in result.stdout
    assert out.is_file()


def test_without_bench_no_speedup_is_claimed(build):
    result, _, data = build("--passes", "cleanup")
    assert result.returncode == 0, result.stderr
    assert "speedup" not in data["ratios"] and data["bench"] is None
    assert "speed-up not measured (--bench)" in result.stdout


@pytest.mark.parametrize(
    ("args", "gate"),
    [
        (("--passes", "cleanup", "--min-top1", "0.99"), "--min-top1"),
        (("--passes", "cleanup", "--min-cosine", "0.9999"), "--min-cosine"),
        (("--passes", "cleanup", "--min-speedup", "0.01"), "--min-speedup"),
        (("--passes", "quant", "--max-size", "0.5"), "--max-size"),
        (("--passes", "cleanup", "--max-size", "10MB"), "--max-size"),
    ],
)
def test_gate_met_is_listed_and_the_model_written(build, args, gate):
    result, out, data = build(*args)
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    assert [g["gate"] for g in data["gates"]] == [gate] and data["gates"][0]["passed"] is True
    assert f"gate {gate}: passed (required" in result.stdout


MISSED = "gate {} missed: required "


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("--passes", "quant", "--min-cosine", "0.99999"),
         MISSED.format("--min-cosine") + ">= 0.99999, measured 0.99"),
        (("--passes", "cleanup", "--min-speedup", "100"),
         MISSED.format("--min-speedup") + ">= 100, measured "),
        (("--passes", "cleanup", "--max-size", "0.01"),
         MISSED.format("--max-size") + "<= 0.01 of the input"),
        (("--passes", "cleanup", "--max-size", "1KiB"),
         MISSED.format("--max-size") + "<= 1KiB (1024 B)"),
    ],
)  # fmt: skip
def test_gate_missed_is_one_line_exit_1_and_no_model(build, args, line):
    result, out, data = build(*args)
    _assert_one_line_error(result, line, code=1)
    assert result.stderr.strip().endswith("(no model written)")
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out.onnx")]
    assert data["output"] == "" and data["gates"][0]["passed"] is False  # the report says why


def test_top1_gate_on_a_model_without_logits_fails_as_not_measured(tmp_path):
    model = _parsed(tmp_path, "g (float[N, 3, 4, 4] x) => (float[N, 3, 4, 4] y) { y = Relu(x) }",
                    "relu.onnx")  # fmt: skip
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "c.npz", x=rng.standard_normal((8, 3, 4, 4)).astype(np.float32))
    out = tmp_path / "o.onnx"
    result = run_cli(
        "optimize", model, "-o", out, "--calib", tmp_path / "c.npz", "--min-top1", "0.5", "-q"
    )
    _assert_one_line_error(
        result, MISSED.format("--min-top1") + ">= 0.5, measured not measured (no output is 2-D "
        "logits)", code=1
    )  # fmt: skip
    assert not out.exists()


def test_keep_failed_writes_the_model_and_still_exits_1(build):
    result, out, data = build("--passes", "cleanup", "--min-speedup", "100", "--keep-failed")
    _assert_one_line_error(result, "gate --min-speedup missed", code=1)
    assert result.stderr.strip().endswith("(model written anyway (--keep-failed))")
    assert out.is_file() and data["output"] == str(out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-size", "3XB"), "--max-size: cannot read '3XB'"),
        (("--max-size", "0"), "--max-size must be positive"),
        (("--min-top1", "1.5"), "--min-top1 must be in [0, 1], got 1.5"),
        (("--min-speedup", "-1"), "--min-speedup must be positive"),
    ],
)
def test_bad_gate_values_are_refused_before_any_work(digits_copy, args, message):
    result = run_cli("optimize", digits_copy, *args)
    _assert_one_line_error(result, message)
    assert not (digits_copy.parent / "digits.opt.onnx").exists()


def test_fidelity_gate_without_data_is_refused(digits_copy):
    result = run_cli("optimize", digits_copy, "--min-cosine", "0.9")
    _assert_one_line_error(result, "--min-top1/--min-cosine need --val or --calib")


# --- the Markdown report ------------------------------------------------------------------


def test_markdown_report_for_a_ci_summary(digits_copy, digits_calib):
    report = digits_copy.parent / "build.md"
    result = run_cli(
        "optimize",
        digits_copy,
        "--passes",
        "prune,quant",
        "--calib",
        digits_calib,
        "--bench",
        "--min-top1",
        "0.9",
        "--report",
        report,
    )
    assert result.returncode == 0, result.stderr
    text = report.read_text()
    assert text.startswith("# onnxopt optimize report\n")
    assert "- pipeline: `prune{ratio=0.3," in text
    assert "- output: `digits.opt.onnx` (" in text
    assert "- fidelity vs input: cos 0.9" in text and "top1 100.0%" in text
    assert "| pass | status | time | params | MACs | size | fidelity vs before |" in text
    rows = [line for line in text.splitlines() if line.startswith("| prune |")]
    assert len(rows) == 1 and "| changed |" in rows[0]
    assert "| cleanup (for quant) | changed |" in text and "| quant | changed |" in text
    assert "- fidelity measured on holdout: 32 of 128 samples of digits_calib.npz" in text
    assert "speed-up" in text and "(measured)" in text
    assert "| --min-top1 | >= 0.9 | 1.0000 | pass |" in text
    assert "## Skipped by the passes" in text
    assert "- `prune`: channels of '/fc/Gemm' not pruned" in text
    assert not text.lstrip().startswith("{")


# --- progress: on a terminal only ---------------------------------------------------------


def _stderr_of(digits_copy, digits_calib, *, on_pty: bool) -> str:
    args = [
        *cli_command(),
        "optimize",
        str(digits_copy),
        "--passes",
        "cleanup",
        "--force",
        "--calib",
        str(digits_calib),
        "--bench",
    ]
    env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        "TERM": "xterm",
        "COLUMNS": "120",
    }
    if not on_pty:
        done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stderr
    main, child = pty.openpty()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=child, env=env)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 300)
        try:
            chunk = os.read(main, 65536) if ready else b""
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    assert process.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_shows_on_a_terminal_and_not_on_a_pipe(digits_copy, digits_calib):
    assert "benchmark input vs output" in _stderr_of(digits_copy, digits_calib, on_pty=True)
    piped = _stderr_of(digits_copy, digits_calib, on_pty=False)
    assert "benchmark input vs output" not in piped and "\x1b[" not in piped


# --- the Python API -----------------------------------------------------------------------


def test_api_lists_missed_gates_writes_no_model_and_raises_on_request(digits_model, digits_calib,
                                                                      tmp_path):  # fmt: skip
    from onnxopt import api
    from onnxopt.errors import CheckFailed

    out = tmp_path / "o.onnx"
    result = api.optimize(
        onnx.load(digits_model), out, passes="cleanup", calib=digits_calib, bench=True,
        min_cosine=0.999, max_size="1KB",
    )  # fmt: skip
    assert [g.gate for g in result.failed_gates] == ["--max-size"]
    assert result.output is None and not out.exists()
    assert [g["passed"] for g in result.report.gates] == [True, False]
    assert result.report.ratios["speedup"] > 0  # an in-memory input is benchmarked too
    with pytest.raises(CheckFailed, match=r"gate --max-size missed: required <= 1KB \(1000 B\)"):
        result.raise_for_failures()
