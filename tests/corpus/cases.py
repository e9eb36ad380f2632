"""One corpus case: a folder with `model.onnx` and `test_data_set_*/input_*.pb`.

`input_<i>.pb` feeds `model.graph.input[i]` (as in onnx's backend test runner) and holds a
TensorProto, SequenceProto or OptionalProto depending on that input's type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

Feed = dict[str, Any]


def load_feeds(case_dir: Path, model: onnx.ModelProto) -> list[Feed]:
    """The inputs of every test data set, as ORT takes them (arrays, lists, None)."""
    feeds = []
    for data_dir in sorted(case_dir.glob("test_data_set_*")):
        files = sorted(data_dir.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
        feed = {}
        for index, path in enumerate(files):
            value = model.graph.input[index]
            feed[value.name] = _read_value(path, value.type)
        feeds.append(feed)
    return feeds


def _read_value(path: Path, type_proto: onnx.TypeProto) -> Any:
    content = path.read_bytes()
    if type_proto.HasField("sequence_type"):
        sequence = onnx.SequenceProto()
        sequence.ParseFromString(content)
        return numpy_helper.to_list(sequence)
    if type_proto.HasField("optional_type"):
        optional = onnx.OptionalProto()
        optional.ParseFromString(content)
        return numpy_helper.to_optional(optional)
    tensor = onnx.TensorProto()
    tensor.ParseFromString(content)
    return numpy_helper.to_array(tensor)


def write_data_folder(feeds: list[Feed], folder: Path) -> Path | None:
    """One `.npz` per data set (keys = input names) in `folder`; None when an input is not a
    plain numpy tensor (sequence, optional) and cannot be written that way."""
    if not feeds or not feeds[0]:
        return None
    for feed in feeds:
        if not all(isinstance(v, np.ndarray) and v.dtype != object for v in feed.values()):
            return None
    folder.mkdir(parents=True, exist_ok=True)
    for index, feed in enumerate(feeds):
        np.savez(folder / f"set_{index:02d}.npz", **feed)
    return folder
