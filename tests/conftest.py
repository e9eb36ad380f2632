"""Shared fixtures: exported zoo models (built once per session) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def cli_command() -> list[str]:
    """The `onnxopt` console script of this interpreter's environment, else the one on PATH
    (falling back to `python -m onnxopt`): a venv's tests run that venv's onnxopt."""
    beside = Path(sys.executable).parent / "onnxopt"
    script = str(beside) if beside.is_file() else shutil.which("onnxopt")
    return [script] if script else [sys.executable, "-m", "onnxopt"]


def run_cli(*args: str | Path, cwd: Path | None = None, preexec_fn=None) -> CliResult:
    """Run the console script; `preexec_fn` runs in the child first (e.g. a memory cap)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [*cli_command(), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        preexec_fn=preexec_fn,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("zoo")


@pytest.fixture(scope="session")
def convbnrelu_path(zoo_dir) -> Path:
    from tests.zoo import make_convbnrelu_onnx

    return make_convbnrelu_onnx(zoo_dir / "convbnrelu.onnx", seed=0)


@pytest.fixture(scope="session")
def transformer_path(zoo_dir) -> Path:
    from tests.zoo import make_tiny_transformer_onnx

    return make_tiny_transformer_onnx(zoo_dir / "transformer.onnx", seed=0)


@pytest.fixture(scope="session")
def if_model_path(zoo_dir) -> Path:
    from tests.zoo import make_if_model_onnx

    return make_if_model_onnx(zoo_dir / "if_model.onnx", seed=0)


@pytest.fixture(scope="session")
def mobilenet_path(zoo_dir) -> Path:
    from tests.zoo import make_mobilenet_v2_onnx

    return make_mobilenet_v2_onnx(zoo_dir / "mobilenet.onnx", seed=0)


@pytest.fixture(scope="session")
def digits_model() -> Path:
    return REPO / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="session")
def digits_calib() -> Path:
    return REPO / "examples" / "digits_calib.npz"


def ort_outputs(model: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def random_feed(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    from onnxopt.data.sources import input_specs

    rng = np.random.default_rng(seed)
    feed = {}
    for spec in input_specs(model):
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feed


def run_pass(pass_, model: onnx.ModelProto, ctx):
    """`pass_.run` after the passes it asks for (`Pass.prerequisites`), each run alone as the
    pass manager would run it, without the manager's gates."""
    from onnxopt.infra.pipeline import parse_pipeline
    from onnxopt.infra.registry import get_pass_class

    for text in pass_.prerequisites(model):
        for step in parse_pipeline(text).steps:
            model = get_pass_class(step.name)(step.options).run(model, ctx).model
    return pass_.run(model, ctx)


def float_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    """A model of `nodes` with float32 inputs/outputs given as (name, shape) pairs, at an IR
    version ONNX Runtime loads."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model
