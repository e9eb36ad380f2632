"""`upgrade`: convert the model's default-domain opset with onnx's version converter.

The pass manager runs it right before a pass whose `min_opset` is above the model's opset (see
`Pass.prerequisites`): the report shows it as a row of its own, e.g. `upgrade (for quant)`, with
the opsets before and after in its stats. Like `cleanup` it must leave the outputs as they were
(max relative error 1e-5 on the validation samples), else the manager rolls it back.

Rewrites: every node whose op changed between the two opsets (the converter's adapters: Upsample
to Resize, BatchNormalization's spatial attribute dropped, Squeeze/Unsqueeze/Reduce axes moved
to inputs, ...); nodes it creates get names; the IR version is raised to the oldest that can
carry the new opset (see `onnxopt.ir.opset`).

Refuses (one line, model untouched) when the converter fails or its result fails the checker,
and when the model is older than opset 7 or the target is newer than the converter knows.
Leaves a model already at or above the target opset unchanged.

    onnxopt optimize zoo_opset9.onnx --passes quant --calib c.npz -o o.onnx   # upgrades to 10
    onnxopt optimize old.onnx --passes "upgrade{opset=13}" -o new.onnx
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx

from onnxopt.errors import PassRefused
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import EXACT, Fidelity, Pass, PassContext, PassResult
from onnxopt.ir.graph import default_opset
from onnxopt.ir.opset import (
    OLDEST_UPGRADABLE_OPSET,
    OpsetConversionError,
    newest_convertible_opset,
    upgrade_opset,
)

__all__ = ["UpgradeOptions", "UpgradePass"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpgradeOptions:
    opset: int = option(13, "the default-domain opset to convert the model to", low=1)


class UpgradePass(Pass[UpgradeOptions]):
    name = "upgrade"
    summary = "convert the model to a newer opset (onnx's version converter, outputs checked)"
    Options = UpgradeOptions
    preserves = frozenset()  # nodes are rewritten and renamed
    min_opset = OLDEST_UPGRADABLE_OPSET

    def fidelity(self) -> Fidelity:
        return EXACT

    def opset_after(self, opset: int) -> int:
        return max(opset, self.options.opset)

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        super().check_applicable(model, ctx)
        newest = newest_convertible_opset()
        if self.options.opset > newest:
            raise PassRefused(
                f"pass 'upgrade' cannot reach opset {self.options.opset}, the model has opset "
                f"{default_opset(model)}: onnx's converter reaches opset {newest} at most"
            )

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        source, target = default_opset(model), self.options.opset
        if source >= target:
            return PassResult(model, False, {"opset": source}, [f"model already at opset {source}"])
        try:
            converted = upgrade_opset(model, target)
        except OpsetConversionError as exc:
            raise PassRefused(f"pass 'upgrade': {exc}") from None
        changed_ops = _changed_ops(model, converted)
        log.info("opset %d -> %d: %s", source, target, changed_ops)
        stats = {
            "opset_from": source,
            "opset_to": target,
            "ir_version": [model.ir_version, converted.ir_version],
            "nodes": [len(model.graph.node), len(converted.graph.node)],
            "op_types_changed": changed_ops,
        }
        return PassResult(converted, True, stats)


def _changed_ops(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """Op types whose count differs after the conversion: +added, -removed."""
    counts: dict[str, int] = {}
    for node in before.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) - 1
    for node in after.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return {op: n for op, n in sorted(counts.items()) if n}
