"""ONNX files are untrusted input: external data that leaves the model's folder or lies about
its size, and shape bombs, are refused with one `error:` line before anything is read or
allocated, by every command. The bombs run under a 4 GiB address-space cap, so an allocation
that slipped through would fail (MemoryError, exit 1) instead of swapping the machine.
"""

from __future__ import annotations

import signal

import numpy as np
import onnx
import pytest

from onnxopt import api
from onnxopt.errors import InputError
from onnxopt.ir.io import load_model, save_model, signals_deferred
from onnxopt.ir.limits import tensor_bytes
from tests.conftest import run_cli
from tests.zoo import bombs

MEMORY_CAP = 4 << 30
COMMANDS = ("optimize", "inspect", "validate", "benchmark")


def _command(command: str, model, out):
    return {
        "optimize": ["optimize", model, "-o", out / "o.onnx", "--passes", "cleanup"],
        "inspect": ["inspect", model],
        "validate": ["validate", model, model, "--data", "random", "--json", out / "v.json"],
        "benchmark": ["benchmark", model, "--runs", "2", "--warmup", "0", "--no-memory"],
    }[command]


def _assert_refused(result, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def escaping(tmp_path_factory):
    return bombs.escaping_models(tmp_path_factory.mktemp("escaping"))


ESCAPES = {
    "parent": "escapes the model's folder",
    "absolute": "must be a relative path",
    "dot_dot_inside": "escapes the model's folder",
    "symlink_file": "escapes the model's folder",
    "symlink_dir": "escapes the model's folder",
    "backslash_root": "must be a relative path",
    "in_constant_node": "escapes the model's folder",
    "in_subgraph": "escapes the model's folder",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_external_data_outside_the_model_folder_is_refused(escaping, case, command, tmp_path):
    model = escaping[case]
    before = sorted(p.name for p in model.parent.iterdir())
    result = run_cli(*_command(command, model, tmp_path))
    _assert_refused(result, ESCAPES[case])
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in model.parent.iterdir()) == before


LIES = {
    "offset_not_a_number": "offset 'twelve' of tensor 'w' is not a byte count",
    "negative_offset": "offset '-8' of tensor 'w' is not a byte count",
    "length_not_a_number": "length '16 bytes' of tensor 'w' is not a byte count",
    "length_short_of_shape": "is 16 bytes, but its shape [1000] needs 4000",
    "shape_larger_than_file": "external data file 'w.bin' is truncated",
    "nul_in_location": "contains a NUL byte",
    "location_is_folder": "external data file '.' of tensor 'w' is missing",
    "empty_location": "must be a relative path",
}


@pytest.fixture(scope="module")
def lying(tmp_path_factory):
    return bombs.lying_external_models(tmp_path_factory.mktemp("lying"))


@pytest.mark.parametrize("case", sorted(LIES))
def test_malformed_external_data_is_refused_on_load(lying, case):
    with pytest.raises(InputError, match=LIES[case].replace("[", r"\[").replace("]", r"\]")):
        load_model(lying[case])


@pytest.mark.parametrize(
    "case", ["offset_not_a_number", "length_short_of_shape", "nul_in_location"]
)
def test_malformed_external_data_is_one_cli_line(lying, case, tmp_path):
    result = run_cli("optimize", lying[case], "-o", tmp_path / "o.onnx")
    _assert_refused(result, LIES[case])
    assert list(tmp_path.iterdir()) == []


def test_locations_that_stay_inside_the_folder_load(tmp_path):
    (tmp_path / "sub").mkdir()
    bombs.write_weights(tmp_path / "sub" / "w.bin")
    for location in ("sub/../sub/w.bin", "./sub/w.bin"):
        path = bombs.external_model(tmp_path, location)
        weight = onnx.numpy_helper.to_array(load_model(path).proto.graph.initializer[0])
        np.testing.assert_array_equal(weight, np.arange(4, dtype=np.float32))


def test_symbolic_links_inside_the_folder_are_refused_in_one_line(tmp_path):
    (tmp_path / "sub").mkdir()
    bombs.write_weights(tmp_path / "sub" / "w.bin")
    (tmp_path / "link.bin").symlink_to(tmp_path / "sub" / "w.bin")
    (tmp_path / "linked").symlink_to(tmp_path / "sub", target_is_directory=True)
    path = bombs.external_model(tmp_path, "link.bin")
    _assert_refused(run_cli("inspect", path), "'link.bin' of tensor 'w' is a symbolic link")
    path = bombs.external_model(tmp_path, "linked/w.bin")
    _assert_refused(run_cli("inspect", path), "cannot read the external data of")


# --- shape bombs ------------------------------------------------------------------------------

BOMBS = {
    "sparse": (bombs.sparse_bomb, "the external data declares 4.0 TiB"),
    "inline_dims": (bombs.inline_dims_bomb, "needs 4.0 TiB but stores 16 B"),
    "input_dim": (bombs.input_dim_bomb, "tensor 'x' of shape [1, 1099511627776] needs 4.0 TiB"),
    "ConstantOfShape": (
        lambda f: bombs.computed_bomb(f, "ConstantOfShape"),
        "tensor 'big' of shape [1099511627776] needs 4.0 TiB",
    ),
    "Expand": (lambda f: bombs.computed_bomb(f, "Expand"), "tensor 'big' of shape"),
    "Tile": (lambda f: bombs.computed_bomb(f, "Tile"), "tensor 'big' of shape"),
}
DECLARED_ONLY = ("input_dim", "ConstantOfShape", "Expand", "Tile")
"""Bombs whose file is well-formed: `inspect` describes them (it runs nothing)."""


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(BOMBS))
def test_shape_bombs_are_refused_before_allocation(case, command, tmp_path):
    build, message = BOMBS[case]
    folder = tmp_path / "model"
    folder.mkdir()
    model = build(folder)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*_command(command, model, out), preexec_fn=bombs.memory_cap(MEMORY_CAP))
    if command == "inspect" and case in DECLARED_ONLY:
        assert result.returncode == 0, result.stderr
        assert ("1099511627776" if case == "input_dim" else case) in result.stdout
        return
    _assert_refused(result, message)
    assert list(out.iterdir()) == []


def test_random_data_for_a_huge_given_shape_is_refused(tmp_path):
    model = bombs.computed_bomb(tmp_path, "Tile")
    graph = onnx.load(model)
    graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "n"
    onnx.save(graph, model)
    result = run_cli(
        "benchmark",
        model,
        "--shape",
        "x:1099511627776",
        "--runs",
        "1",
        "--no-memory",
        preexec_fn=bombs.memory_cap(MEMORY_CAP),
    )
    _assert_refused(result, "random data for input 'x' of shape [1099511627776] needs 8.0 TiB")


def test_sub_byte_and_string_tensor_sizes():
    assert tensor_bytes(onnx.TensorProto.INT4, [3, 3]) == 5
    assert tensor_bytes(onnx.TensorProto.FLOAT16, [2, 3]) == 12
    assert tensor_bytes(onnx.TensorProto.STRING, [4]) is None


# --- atomic outputs ---------------------------------------------------------------------------


def test_signals_during_a_commit_are_delivered_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        signal.raise_signal(signal.SIGINT)
        done.append("renamed")
    assert done == ["renamed"]


def test_model_and_data_file_are_committed_together(tmp_path, monkeypatch):
    from tests.zoo.small_cnn import small_cnn

    renamed = []
    real_replace = __import__("os").replace

    def interrupted_replace(src, dst):
        renamed.append(str(dst))
        real_replace(src, dst)
        if len(renamed) == 1:
            signal.raise_signal(signal.SIGINT)  # between the data file and the model

    monkeypatch.setattr("onnxopt.ir.io.os.replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        save_model(small_cnn(), tmp_path / "m.onnx", external_data=True)
    assert [name.rsplit("/", 1)[1] for name in renamed] == ["m.onnx.data", "m.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]


def test_interrupted_report_write_leaves_no_model(tmp_path, monkeypatch):
    from tests.zoo.small_cnn import small_cnn

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "write_text_atomic", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.optimize(small_cnn(), tmp_path / "o.onnx", report=tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []
