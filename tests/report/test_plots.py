"""`benchmark --plot`: a real picture of the per-round latencies, written atomically; without
matplotlib, one line naming the install command before any timing."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxopt import api
from onnxopt.errors import InputError
from tests.conftest import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL_TEXT = (
    '<ir_version: 10, opset_import: ["" : 17]>\n'
    "g (float[N, 64] x) => (float[N, 32] y) <float[64, 32] w = {"
    + ", ".join(["0.25"] * 64 * 32)
    + "}> { y = MatMul(x, w) }"
)


@pytest.fixture
def model_path(tmp_path):
    model = onnx.parser.parse_model(MODEL_TEXT)
    model.ir_version = 10
    path = tmp_path / "matmul.onnx"
    onnx.save(model, path)
    return path


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_of_the_rounds(model_path, tmp_path):
    plot, report_path = tmp_path / "latency.png", tmp_path / "b.json"
    report = api.benchmark(
        [model_path, model_path],
        runs=12,
        warmup=1,
        memory=False,
        plot=plot,
        json_path=report_path,
    )
    width, height = _png_size(plot.read_bytes())
    assert 600 <= width <= 2000 and 400 <= height <= 1200
    assert plot.read_bytes()[-12:-4] == b"\x00\x00\x00\x00IEND"  # complete, not truncated
    assert not list(tmp_path.glob(".latency.png.*"))  # no staging file left behind
    for model in report.models:
        assert len(model.samples_ms) == 12
        assert model.latency_ms["p50"] == pytest.approx(np.median(model.samples_ms), rel=1e-12)
    assert "samples_ms" not in json.loads(report_path.read_text())["models"][0]


def test_plot_svg_by_suffix(model_path, tmp_path):
    plot = tmp_path / "latency.svg"
    api.benchmark([model_path], runs=5, warmup=0, memory=False, plot=plot)
    assert plot.read_text().lstrip().startswith("<?xml") and "<svg" in plot.read_text()


def test_plot_refuses_an_unknown_suffix_before_timing(model_path, tmp_path):
    with pytest.raises(InputError, match=r"--plot .*x\.txt: give a file name ending in \.png"):
        api.benchmark([model_path], runs=5, memory=False, plot=tmp_path / "x.txt")
    with pytest.raises(InputError, match="refusing to overwrite the input model"):
        api.benchmark([model_path], runs=5, memory=False, plot=model_path)


def test_a_failed_drawing_writes_nothing(model_path, tmp_path, monkeypatch):
    plot, report_path = tmp_path / "latency.png", tmp_path / "b.json"
    plot.write_bytes(b"previous picture")

    def broken(report, image_format):
        raise RuntimeError("the renderer failed")

    monkeypatch.setattr(api, "latency_figure", broken)
    with pytest.raises(RuntimeError, match="the renderer failed"):
        api.benchmark([model_path], runs=5, memory=False, plot=plot, json_path=report_path)
    assert plot.read_bytes() == b"previous picture" and not report_path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.png", "matmul.onnx"]


def test_without_matplotlib_plot_exits_2_naming_the_extra(model_path, tmp_path):
    plot = tmp_path / "latency.png"
    script = (
        "import sys; sys.modules['matplotlib'] = None; "  # makes `import matplotlib` fail
        "from onnxopt.cli import main; "
        f"sys.argv = ['onnxopt', 'benchmark', {str(model_path)!r}, '--plot', {str(plot)!r}]; "
        "main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "error: --plot needs matplotlib, which is not installed: pip install 'onnxopt[plot]'"
    ]
    assert not plot.exists()


def test_cli_benchmark_plot(model_path, tmp_path):
    plot = tmp_path / "latency.png"
    result = run_cli(
        "benchmark", model_path, model_path, "--runs", "5", "--no-memory", "--plot", plot
    )
    assert result.returncode == 0, result.stderr
    assert _png_size(plot.read_bytes())[0] >= 600
