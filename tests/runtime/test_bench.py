"""Benchmark: JSON/CSV schema, round-robin timing, input errors, the CUDA-absent error."""

from __future__ import annotations

import csv
import json

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
import pytest

from onnxopt import api
from onnxopt.errors import InputError
from onnxopt.runtime.bench import SCHEMA, BenchSettings, _timed_rounds
from tests.conftest import run_cli

HEADER = '<ir_version: 10, opset_import: ["" : 17]>\n'
LATENCY_KEYS = {"p10", "p25", "p50", "p75", "p90", "p99", "mean", "std", "min", "max"}


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER + text)
    model.ir_version = 10
    return model


MATMUL = parse(
    "g (float[N, 64] x) => (float[N, 32] y) <float[64, 32] w = {"
    + ", ".join(["0.5"] * 64 * 32)
    + "}> { y = MatMul(x, w) }"
)


@pytest.fixture
def matmul_path(tmp_path):
    path = tmp_path / "matmul.onnx"
    onnx.save(MATMUL, path)
    return path


def test_benchmark_report_schema(matmul_path, tmp_path):
    json_path, csv_path = tmp_path / "b.json", tmp_path / "b.csv"
    report = api.benchmark(
        [matmul_path, MATMUL],
        batch=4,
        threads=1,
        warmup=1,
        runs=7,
        json_path=json_path,
        csv_path=csv_path,
    )
    data = json.loads(json_path.read_text())
    assert data["schema"] == SCHEMA
    assert data["settings"] | {"spin": False} == {
        "provider": "cpu",
        "batch": 4,
        "threads": 1,
        "warmup": 1,
        "runs": 7,
        "seconds": None,
        "memory": True,
        "spin": False,
        "seed": 0,
    }
    assert data["environment"]["onnxruntime"] == ort.__version__
    assert data["environment"]["execution_provider"] == "CPUExecutionProvider"
    first, second = data["models"]
    assert first["name"] == "matmul.onnx" and second["name"] == "model1.onnx"
    for entry in (first, second):
        assert set(entry["latency_ms"]) == LATENCY_KEYS
        lat = entry["latency_ms"]
        assert lat["min"] <= lat["p10"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert entry["runs"] == 7 and entry["batch"] == 4
        assert entry["inputs"] == {"x": [4, 64]}
        assert entry["macs"] == 4 * 64 * 32 and entry["params"] == 64 * 32
        assert entry["throughput"] == pytest.approx(4000 / lat["mean"], rel=1e-9)
        assert entry["file_bytes"] > 64 * 32 * 4 and entry["session_seconds"] > 0
        assert entry["peak_memory_bytes"] > 0 and entry["memory_method"].startswith("VmHWM")
        low, high = entry["ratio_range"]
        assert low <= entry["ratio"] <= high
    assert first["ratio"] == 1.0
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["name"] for r in rows] == ["matmul.onnx", "model1.onnx"]
    assert {"latency_p50_ms", "ratio_p10", "ratio_p90", "inputs"} <= set(rows[0])
    assert rows[0]["inputs"] == "x:4x64"
    assert report.models[1].latency_ms["p50"] > 0


def test_rounds_are_interleaved_with_rotating_start():
    calls = []
    runners = [lambda i=i: calls.append(i) for i in range(3)]
    times = _timed_rounds(runners, BenchSettings(warmup=0, runs=3), None)
    assert times.shape == (3, 3)
    assert calls == [0, 1, 2, 1, 2, 0, 2, 0, 1]


def test_seconds_budget_runs_at_least_five_rounds():
    progress = []
    times = _timed_rounds([lambda: None], BenchSettings(warmup=0, seconds=1e-9), progress.append)
    assert times.shape == (5, 1) and progress[-1] == 1.0


def test_input_errors(matmul_path):
    static = parse("g (float[2, 4] x) => (float[2, 4] y) { y = Relu(x) }")
    with pytest.raises(InputError, match="static batch of 2; cannot run batch 3"):
        api.benchmark([static], batch=3, runs=1, memory=False)
    seq = parse("g (float[N, T] x) => (float[N, T] y) { y = Relu(x) }")
    with pytest.raises(InputError, match=r"has dynamic dim 1; give it with --shape x:NxN"):
        api.benchmark([seq], runs=1, memory=False)
    report = api.benchmark([seq], shapes=["x:2x5"], runs=1, warmup=0, memory=False)
    assert report.models[0].inputs == {"x": [2, 5]}
    with pytest.raises(InputError, match="either --runs or --seconds"):
        api.benchmark([matmul_path], runs=3, seconds=1.0)
    with pytest.raises(InputError, match="--runs must be at least 1, got 0"):
        api.benchmark([matmul_path], runs=0)
    with pytest.raises(InputError, match="--seconds must be positive"):
        api.benchmark([matmul_path], seconds=0)
    with pytest.raises(InputError, match="'y', which is not a model input"):
        api.benchmark([matmul_path], shapes=["y:1x2"], memory=False)


def test_inputs_from_data(matmul_path, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 64), np.float32))
    report = api.benchmark(
        [matmul_path], data=tmp_path / "d.npz", batch=2, runs=2, warmup=0, memory=False
    )
    assert report.models[0].inputs == {"x": [2, 64]} and report.models[0].peak_memory_bytes is None


def test_cli_benchmark_plain_text(matmul_path):
    result = run_cli("benchmark", matmul_path, "--runs", "3", "--warmup", "1", "--no-memory")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "benchmark on CPUExecutionProvider"
    assert "p50 ms" in lines[1] and "\x1b[" not in result.stdout  # no rich markup off a TTY
    assert "inputs x:1x64; 3 rounds after 1 warm-up" in result.stdout


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here"
)
def test_cli_cuda_absent_is_one_line_exit_2(matmul_path):
    result = run_cli("benchmark", matmul_path, "--provider", "cuda")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("error: execution provider CUDAExecutionProvider is not available")
    assert result.stdout == ""
