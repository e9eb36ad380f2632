"""Ctrl-C (SIGINT) or SIGTERM in the middle of a real `onnxopt optimize` process: exit 130 with
one line, and nothing left behind: no output model, no report, no temporary files."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import cli_command


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_nothing_behind(digits_model, digits_calib, tmp_path, signum):
    scratch, out = tmp_path / "tmp", tmp_path / "out"
    scratch.mkdir()
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # Each session on an in-memory model has its folder there while it loads: the second one
    # (after the input model's) comes from the passes.
    env["TMPDIR"] = str(scratch)
    command = [
        *cli_command(), "-q", "optimize", str(digits_model), "-o", str(out / "o.onnx"),
        "--passes", "cleanup,prune,quant", "--calib", str(digits_calib),
        "--report", str(out / "report.json"),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    seen: set[str] = set()
    while len(seen) < 2:
        seen.update(path.name for path in scratch.glob("onnxopt-session-*"))
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.005)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["interrupted: no output written"]
    assert list(out.iterdir()) == []
    assert list(scratch.glob("onnxopt-*")) == []  # (onnxruntime keeps a `.ses` id file there)
