"""The one home of opset conversion: onnx's version converter, made safe for what follows.

`upgrade_opset` converts the default-domain opset with `onnx.version_converter` and then fixes
what the converter leaves behind:
- nodes it creates (a Constant for Squeeze axes, the Shape/Flatten/Reshape around a Softmax
  13 rewrite, the Resize replacing an Upsample) have no name, and everything in onnxopt that
  keys nodes by name needs names unique again;
- the IR version stays what the model had, which may be below the oldest IR version that can
  carry the new opset (a model at IR 3 and opset 13 fails the checker): it is raised to that
  minimum, never above what the model had when it was already higher;
- before IR 4 every initializer had to be listed as a graph input too: there those entries are
  weights, not inputs. From IR 4 on an initializer that is also an input is a default a caller
  may override, which ONNX Runtime and every constant-folding step treat as not constant (no
  BatchNorm folding, no int8 weight). Raising the IR version from below 4 therefore drops those
  entries from the inputs, keeping the meaning the model had.
"""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from onnxopt.ir.graph import ONNX_DOMAINS, default_opset
from onnxopt.ir.qdq import ensure_node_names

OLDEST_UPGRADABLE_OPSET = 7
"""Below opset 7 (ONNX 1.2, the oldest model-zoo exports) ops carried explicit `broadcast` and
`consumed_inputs` attributes; onnxopt does not convert from there."""


WEIGHTS_NOT_INPUTS_IR = 4
"""The first IR version in which an initializer need not be listed as a graph input."""


def weight_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that are only the IR < 4 listing of an initializer (none from IR 4 on)."""
    if model.ir_version >= WEIGHTS_NOT_INPUTS_IR:
        return set()
    return {t.name for t in model.graph.initializer}


def drop_weight_inputs(graph: onnx.GraphProto) -> None:
    """Remove the graph inputs that name an initializer."""
    weights = {t.name for t in graph.initializer}
    kept = [value for value in graph.input if value.name not in weights]
    del graph.input[:]
    graph.input.extend(kept)


class OpsetConversionError(Exception):
    """The converter failed, or its result fails the checker: one line saying which."""


def newest_convertible_opset() -> int:
    """The newest default-domain opset this onnx's converter writes."""
    return onnx.defs.onnx_opset_version()


def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """A copy of `model` at default-domain opset `target` (> its own), checked, with every node
    named and an IR version that carries the opset. Raises OpsetConversionError."""
    source = default_opset(model)
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError, IndexError, ValidationError...
        raise OpsetConversionError(
            f"onnx's version converter failed from opset {source} to {target}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    needed = helper.find_min_ir_version_for(
        [o for o in converted.opset_import if o.domain in ONNX_DOMAINS]
    )
    if converted.ir_version < WEIGHTS_NOT_INPUTS_IR <= needed:
        drop_weight_inputs(converted.graph)
    converted.ir_version = max(converted.ir_version, needed)
    ensure_node_names(converted.graph)
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as exc:
        raise OpsetConversionError(
            f"the model converted from opset {source} to {target} fails onnx's checker: "
            f"{_first_line(exc)}"
        ) from None
    return converted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else "no message"
