"""Variants of a corpus model that reach more of the passes.

Most node tests feed their weights as graph inputs, and the pytorch-converted models are
opset 6-9 (below quant's minimum), so prune, share and quant would rarely see a weight:
- `frozen`: every tensor input but the first becomes an initializer holding its value from
  the first test data set, so Conv/Gemm/MatMul/LSTM/... get constant weights; only the first
  input is fed.
- `opset13`: a model below opset 10 converted by onnx.version_converter to opset 13 and IR 8,
  its initializers no longer graph inputs (as a current exporter writes the same network).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper, version_converter

from tests.corpus.cases import Feed, load_feeds

WEIGHTED_OPS = frozenset(
    {
        "Attention",
        "BatchNormalization",
        "Conv",
        "ConvTranspose",
        "Einsum",
        "GRU",
        "Gemm",
        "GroupNormalization",
        "InstanceNormalization",
        "LSTM",
        "LayerNormalization",
        "MatMul",
        "PRelu",
        "RMSNormalization",
        "RNN",
    }
)
MODERN_OPSET = 13
MODERN_IR = 8


def variants_of(model_path: Path) -> list[str]:
    """Which variants of the model at `model_path` are worth running."""
    model = onnx.load(str(model_path), load_external_data=False)
    found = []
    inputs = _fed_inputs(model)
    if (
        model.ir_version >= 4
        and len(inputs) >= 2
        and all(i.type.HasField("tensor_type") for i in inputs)
        and any(node.op_type in WEIGHTED_OPS for node in model.graph.node)
    ):
        found.append("frozen")
    if 0 < _default_opset(model) < 10:
        found.append("opset13")
    return found


def prepare(case_dir: Path, variant: str, workdir: Path) -> tuple[Path, list[Feed]]:
    """The model file to optimize and the feeds for it; variants are written into `workdir`."""
    path = case_dir / "model.onnx"
    model = onnx.load(str(path))
    feeds = load_feeds(case_dir, model)
    if not variant:
        return path, feeds
    if variant == "frozen":
        model, feeds = _freeze(model, feeds)
    elif variant == "opset13":
        model = _modernize(model)
    else:
        raise ValueError(f"unknown variant '{variant}'")
    target = workdir / "variant.onnx"
    onnx.save(model, str(target))
    return target, feeds


def _freeze(model: onnx.ModelProto, feeds: list[Feed]) -> tuple[onnx.ModelProto, list[Feed]]:
    inputs = _fed_inputs(model)
    keep, frozen = inputs[0].name, {i.name for i in inputs[1:]}
    values = feeds[0]
    for name in sorted(frozen):
        if not isinstance(values.get(name), np.ndarray):
            raise ValueError(f"input '{name}' has no tensor value to freeze")
        model.graph.initializer.append(numpy_helper.from_array(values[name], name))
    kept = [i for i in model.graph.input if i.name not in frozen]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model, [{keep: feed[keep]} for feed in feeds]


def _modernize(model: onnx.ModelProto) -> onnx.ModelProto:
    converted = version_converter.convert_version(model, MODERN_OPSET)
    initializers = {t.name for t in converted.graph.initializer}
    kept = [i for i in converted.graph.input if i.name not in initializers]
    del converted.graph.input[:]
    converted.graph.input.extend(kept)
    converted.ir_version = max(converted.ir_version, MODERN_IR)
    onnx.checker.check_model(converted)
    return converted


def _fed_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
