"""Loading untrusted files and saving atomically."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.errors import InputError
from onnxopt.ir.io import load_model, save_model, write_bytes_atomic, write_text_atomic


def _small_model(weight_elems: int = 4096) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(weight_elems, dtype=np.float32).reshape(1, -1), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight_elems])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, weight_elems])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_round_trip_inline(tmp_path):
    path = save_model(_small_model(), tmp_path / "m.onnx")
    loaded = load_model(path)
    assert loaded.external_files == []
    assert onnx.numpy_helper.to_array(loaded.proto.graph.initializer[0])[0, 5] == 5


def test_round_trip_external_data(tmp_path):
    save_model(_small_model(), tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size == 4096 * 4
    loaded = load_model(tmp_path / "m.onnx")
    assert loaded.external_files == [(tmp_path / "m.onnx.data").resolve()]
    assert numpy_helper.to_array(loaded.proto.graph.initializer[0])[0, 4095] == 4095


def test_save_leaves_no_temporary_files(tmp_path):
    save_model(_small_model(), tmp_path / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_refuses_to_overwrite_input(tmp_path):
    path = save_model(_small_model(), tmp_path / "m.onnx")
    before = path.read_bytes()
    loaded = load_model(path)
    with pytest.raises(InputError, match="refusing to overwrite the input model"):
        save_model(loaded.proto, tmp_path / "m.onnx", protect=loaded.source_files)
    assert path.read_bytes() == before


def test_refuses_to_overwrite_input_data_file(tmp_path):
    save_model(_small_model(), tmp_path / "m.onnx", external_data=True)
    loaded = load_model(tmp_path / "m.onnx")
    (tmp_path / "out.onnx.data").symlink_to(tmp_path / "m.onnx.data")
    with pytest.raises(InputError, match="data file"):
        save_model(
            loaded.proto, tmp_path / "out.onnx", protect=loaded.source_files, external_data=True
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"hello, this is not a model", "not a valid ONNX model"), (b"", "not a valid ONNX model")],
)
def test_not_onnx(tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_model(path)


def test_truncated(tmp_path):
    path = save_model(_small_model(), tmp_path / "m.onnx")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a valid ONNX model"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="model file not found"):
        load_model(tmp_path / "absent.onnx")


def test_missing_external_data(tmp_path):
    save_model(_small_model(), tmp_path / "m.onnx", external_data=True)
    (tmp_path / "m.onnx.data").unlink()
    with pytest.raises(
        InputError, match=r"external data file 'm\.onnx\.data' of tensor 'w' is missing"
    ):
        load_model(tmp_path / "m.onnx")


def test_truncated_external_data(tmp_path):
    save_model(_small_model(), tmp_path / "m.onnx", external_data=True)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="truncated"):
        load_model(tmp_path / "m.onnx")


@pytest.mark.parametrize("location", ["../escape.bin", "/etc/passwd", "sub/../../escape.bin"])
def test_external_location_must_stay_inside(tmp_path, location):
    model = _small_model()
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    with pytest.raises(InputError, match=r"relative path|escapes the model's folder"):
        load_model(folder / "m.onnx")


def test_output_directory_checks(tmp_path):
    with pytest.raises(InputError, match="output directory does not exist"):
        save_model(_small_model(), tmp_path / "nowhere" / "m.onnx")


def test_atomic_writes_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "r.json", "{}\n")
        picture = write_bytes_atomic(tmp_path / "p.png", b"\x89PNG")
    finally:
        os.umask(previous)
    assert text.read_text() == "{}\n" and picture.read_bytes() == b"\x89PNG"
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(picture.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.json"]
