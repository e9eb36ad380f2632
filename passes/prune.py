"""`prune`: structured channel pruning with dependency groups and least-squares reconstruction.

Removes whole channels (Conv filters, Gemm/MatMul features) and everything coupled to them:
- the channel analysis (`onnxopt.analyses.channel_groups`) finds the groups of channels that
  must go together (residual Adds, squeeze-excite Muls, depthwise Convs, Concat offsets,
  Split ranges, Flatten->Gemm blocks) and blocks groups it cannot follow: an op outside its
  table, a graph output, a grouped Conv; the report lists each refusal and its reason;
- a criterion scores every channel of each prunable group (default `refit_error`: the error
  the consumers' outputs keep after an optimal least-squares refit, from calibration data);
  `ratio` (per group, or across groups with `scope=global`) or `target_macs` sets how many
  go, rounded to `round_to`; `scope=sensitivity` removes the same MACs as the per-group ratio
  but where they cost the model's outputs least, measured by pruning and refitting each group
  alone on a few calibration samples (`onnxopt.pruning.sensitivity`; 2-7 minutes more on
  MobileNetV2 on 2 cores);
- the rewrite slices weights, biases, BatchNorm parameters, per-channel constants, Split sizes
  and Reshape targets, and the result passes strict shape inference;
- with calibration data, every layer downstream of a removed channel is refit by least squares
  so that its output matches the unpruned model's (the default: without it, accuracy collapses
  after a few percent of channels). Each layer's ridge, and whether it is refit at all, is
  chosen on `held_out` calibration samples after the fitted ones; a refit that does not beat
  the pruned weights there is not applied. The stats report each layer's in-sample and
  held-out error, and the model's fidelity before and after the refit on those samples.

Defaults are the data-driven configuration: `criterion=refit_error` and `reconstruct=true` need
calibration data; without it the pass refuses unless told `criterion=l1,reconstruct=false`.
"""

from __future__ import annotations

import onnx

from onnxopt.errors import InputError
from onnxopt.infra.analysis import channel_groups_of, shapes_of
from onnxopt.infra.pass_base import Fidelity, Pass, PassContext, PassResult
from onnxopt.pruning.importance import DATA_CRITERIA
from onnxopt.pruning.options import PruneOptions
from onnxopt.pruning.run import PruneRun

__all__ = ["PruneOptions", "PrunePass"]


class PrunePass(Pass[PruneOptions]):
    name = "prune"
    summary = "structured channel pruning with dependency groups and least-squares reconstruction"
    Options = PruneOptions
    preserves = frozenset()  # removes channels: shapes and groups change
    min_opset = 7

    def fidelity(self) -> Fidelity:
        return Fidelity(min_cosine=self.options.min_cosine)

    def requires_calibration(self) -> bool:
        o = self.options
        return o.criterion in DATA_CRITERIA or o.reconstruct or o.scope == "sensitivity"

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        if self.requires_calibration() and ctx.calibration is None:
            raise InputError(
                "pass 'prune' needs calibration data (--calib FILE) for its data-driven criterion "
                "and reconstruction; for data-free magnitude pruning (expect a large accuracy "
                "loss) use prune{criterion=l1,reconstruct=false}"
            )
        super().check_applicable(model, ctx)

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        shapes = shapes_of(ctx.analyses, model)
        groups = channel_groups_of(ctx.analyses, model)
        run = PruneRun(self.options, ctx.provider, ctx.seed, ctx.calibration, shapes)
        pruned = run.prune(model, groups)
        if pruned is None:
            return PassResult(model, False, run.stats, run.skipped)
        return PassResult(pruned, True, run.stats, run.skipped)
