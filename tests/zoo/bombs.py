"""Hostile files: external-data references that leave the model's folder or lie about their
size, and shape bombs (a dim of 2^40 on an input, an initializer or a computed tensor).

Each builder writes into a folder and returns the model's path; nothing here allocates the
sizes it declares.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zoo.export import MAX_IR_VERSION

HUGE = 1 << 40
"""A dim no machine can hold as float32 (4 TiB)."""


def _save(folder: Path, graph: onnx.GraphProto, name: str = "model.onnx") -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = MAX_IR_VERSION
    path = Path(folder) / name
    path.write_bytes(model.SerializeToString())
    return path


def _add_graph(weight: onnx.TensorProto, elements: int) -> onnx.GraphProto:
    """y = x + w, x and y of shape [elements]."""
    return helper.make_graph(
        [helper.make_node("Add", ["x", weight.name], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [elements])],
        [weight],
    )


def external_weight(
    name: str,
    location: str,
    dims: list[int],
    *,
    offset: str | None = None,
    length: str | None = None,
) -> onnx.TensorProto:
    """A float tensor whose bytes are declared to live in `location`."""
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", offset), ("length", length)]
    for key, value in entries:
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def external_model(
    folder: Path,
    location: str,
    *,
    elements: int = 4,
    offset: str | None = None,
    length: str | None = None,
) -> Path:
    """`y = x + w` with `w` ([elements] float32) stored at `location` (relative to `folder`)."""
    weight = external_weight("w", location, [elements], offset=offset, length=length)
    return _save(folder, _add_graph(weight, elements))


def write_weights(path: Path, elements: int = 4) -> Path:
    """`elements` float32 values 0, 1, 2, ... in a raw file."""
    path.write_bytes(np.arange(elements, dtype=np.float32).tobytes())
    return path


def escaping_models(root: Path) -> dict[str, Path]:
    """One model folder per way out of it, each next to a real 16-byte weights file outside.

    Layout: `root/outside/secret.bin` (the file that must not be read) and `root/<case>/`.
    """
    outside = root / "outside"
    outside.mkdir()
    secret = write_weights(outside / "secret.bin")
    cases: dict[str, Path] = {}

    def folder(case: str) -> Path:
        path = root / case
        path.mkdir()
        return path

    cases["parent"] = external_model(folder("parent"), "../outside/secret.bin")
    cases["absolute"] = external_model(folder("absolute"), str(secret))
    cases["dot_dot_inside"] = external_model(
        folder("dot_dot_inside"), "sub/../../outside/secret.bin"
    )
    link_dir = folder("symlink_file")
    (link_dir / "w.bin").symlink_to(secret)
    cases["symlink_file"] = external_model(link_dir, "w.bin")
    dir_link = folder("symlink_dir")
    (dir_link / "weights").symlink_to(outside, target_is_directory=True)
    cases["symlink_dir"] = external_model(dir_link, "weights/secret.bin")
    cases["backslash_root"] = external_model(folder("backslash_root"), "\\outside\\secret.bin")
    cases["in_constant_node"] = _constant_node_model(folder("in_constant_node"))
    cases["in_subgraph"] = _subgraph_model(folder("in_subgraph"))
    return cases


def _constant_node_model(folder: Path) -> Path:
    """The escaping tensor is the value attribute of a Constant node."""
    tensor = external_weight("w", "../outside/secret.bin", [4])
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["w"], value=tensor),
            helper.make_node("Add", ["x", "w"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _save(folder, graph)


def _subgraph_model(folder: Path) -> Path:
    """The escaping tensor is an initializer inside an If branch."""

    def branch(name: str) -> onnx.GraphProto:
        weight = external_weight(f"{name}.w", "../outside/secret.bin", [4])
        return helper.make_graph(
            [helper.make_node("Add", ["x", f"{name}.w"], [f"{name}.y"])],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, [4])],
            [weight],
        )

    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("a"), else_branch=branch("b"))],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    return _save(folder, graph)


def lying_external_models(root: Path) -> dict[str, Path]:
    """External data whose metadata is malformed or disagrees with the tensor's shape."""
    cases: dict[str, Path] = {}

    def case(name: str, location: str = "w.bin", elements: int = 4, **entries) -> None:
        folder = root / name
        folder.mkdir()
        write_weights(folder / "w.bin")
        cases[name] = external_model(folder, location, elements=elements, **entries)

    case("offset_not_a_number", offset="twelve")
    case("negative_offset", offset="-8", length="16")
    case("length_not_a_number", length="16 bytes")
    case("length_short_of_shape", elements=1000, length="16")
    case("shape_larger_than_file", elements=1000)
    case("nul_in_location", location="w.bin\x00.png")
    case("location_is_folder", location=".")
    case("empty_location", location="")
    return cases


def sparse_bomb(folder: Path) -> Path:
    """An initializer of 2^40 float32 (4 TiB) backed by a sparse file that claims to hold it."""
    data = folder / "bomb.bin"
    with open(data, "wb") as stream:
        stream.truncate(HUGE * 4)
    weight = external_weight("w", "bomb.bin", [HUGE], offset="0", length=str(HUGE * 4))
    return _save(folder, _add_graph(weight, HUGE))


def inline_dims_bomb(folder: Path) -> Path:
    """An inline initializer declaring 2^40 elements but storing 4 (a protobuf of a few bytes)."""
    weight = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    del weight.dims[:]
    weight.dims.extend([HUGE])
    return _save(folder, _add_graph(weight, HUGE))


def input_dim_bomb(folder: Path) -> Path:
    """A graph input of static shape [1, 2^40]: feeding it takes 4 TiB."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, HUGE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, HUGE])],
    )
    return _save(folder, graph)


def computed_bomb(folder: Path, op: str) -> Path:
    """A small input and a node that makes a 2^40-element tensor from a constant shape:
    ConstantOfShape, Expand or Tile; its sum is the output."""
    shape = numpy_helper.from_array(np.array([HUGE], np.int64), "shape")
    nodes = {
        "ConstantOfShape": [helper.make_node("ConstantOfShape", ["shape"], ["big"])],
        "Expand": [helper.make_node("Expand", ["x"], ["big"])],
        "Tile": [helper.make_node("Tile", ["x", "shape"], ["big"])],
    }[op]
    if op == "Expand":
        nodes[0].input.append("shape")
    reduce = helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0)
    add = helper.make_node("Add", ["x", "s"], ["y"])
    graph = helper.make_graph(
        [*nodes, reduce, add],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [shape],
    )
    return _save(folder, graph, f"{op.lower()}.onnx")


def memory_cap(limit_bytes: int):
    """A `preexec_fn` that caps the child's address space (RLIMIT_AS) at `limit_bytes`."""
    import resource

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return apply
