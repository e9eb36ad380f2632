"""Two plugin passes, written as a user outside onnxopt would write them.

- `rename_nodes{prefix=...}`: names every main-graph node `<prefix><index>_<op type>` (exact).
- `round_weights{decimals=...}`: rounds float initializers to `decimals` decimal places and
  promises cosine >= 0.9999 to the manager, which rolls it back when rounding breaks that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxopt.infra.options import option
from onnxopt.infra.pass_base import Fidelity, Pass, PassContext, PassResult


@dataclass(frozen=True)
class RenameOptions:
    prefix: str = option("n", "text that starts every new node name")


class RenameNodesPass(Pass[RenameOptions]):
    name = "rename_nodes"
    summary = "name main-graph nodes <prefix><index>_<op type>"
    Options = RenameOptions
    preserves = frozenset({"shapes"})

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        renamed = 0
        for index, node in enumerate(model.graph.node):
            new = f"{self.options.prefix}{index}_{node.op_type}"
            if node.name != new:
                node.name = new
                renamed += 1
        return PassResult(model, renamed > 0, {"renamed": renamed})


@dataclass(frozen=True)
class RoundOptions:
    decimals: int = option(3, "decimal places kept in float weights", low=0, high=8)


class RoundWeightsPass(Pass[RoundOptions]):
    name = "round_weights"
    summary = "round float initializers to a number of decimal places"
    Options = RoundOptions

    def fidelity(self) -> Fidelity:
        return Fidelity(min_cosine=0.9999)

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        rounded = 0
        for index, tensor in enumerate(model.graph.initializer):
            if tensor.data_type != onnx.TensorProto.FLOAT:
                continue
            values = numpy_helper.to_array(tensor)
            new = np.round(values, self.options.decimals).astype(np.float32)
            if not np.array_equal(new, values):
                model.graph.initializer[index].CopyFrom(numpy_helper.from_array(new, tensor.name))
                rounded += 1
        return PassResult(model, rounded > 0, {"tensors_rounded": rounded})
