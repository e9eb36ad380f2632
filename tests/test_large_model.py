"""A model over protobuf's 2 GB limit loads, optimizes and saves with external data."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import ort_outputs, run_cli

ELEMENTS = 560_000_000  # 2.24 GB of float32: over the 2 GiB protobuf limit
PATTERN = 1 << 22


def _write_big_model(folder):
    """Write the weights in chunks so the test itself never holds them in memory."""
    chunk = np.arange(PATTERN, dtype=np.float32)
    with open(folder / "weights.bin", "wb") as stream:
        for start in range(0, ELEMENTS, PATTERN):
            stream.write(chunk[: min(PATTERN, ELEMENTS - start)].tobytes())
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[ELEMENTS])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", "0"), ("length", str(ELEMENTS * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["w", "idx"], ["g"]),
            helper.make_node("Identity", ["g"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, folder / "big.onnx")
    return folder / "big.onnx"


@pytest.mark.slow
def test_model_over_2gb_round_trips(tmp_path):
    if shutil.disk_usage(tmp_path).free < 12e9:
        pytest.skip("needs 12 GB of free disk")
    model = _write_big_model(tmp_path)
    out = tmp_path / "out.onnx"
    result = run_cli("optimize", model, "-o", out, "--passes", "cleanup")
    assert result.returncode == 0, result.stderr
    assert "over 2 GB" in result.stdout
    assert (tmp_path / "out.onnx.data").stat().st_size == ELEMENTS * 4
    optimized = onnx.load(out, load_external_data=False)
    assert [n.op_type for n in optimized.graph.node] == ["Gather"]
    idx = np.array([0, 5, ELEMENTS - 1], dtype=np.int64)
    (got,) = ort_outputs(out, {"idx": idx})
    np.testing.assert_array_equal(got, (idx % PATTERN).astype(np.float32))
