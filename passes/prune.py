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

import copy
import fnmatch
import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, analyze_channel_groups
from onnxopt.analyses.macs import count_macs
from onnxopt.analyses.stats import parameter_count
from onnxopt.errors import InputError
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import Fidelity, Pass, PassContext, PassResult
from onnxopt.pruning.activations import channel_moments, consumer_grams
from onnxopt.pruning.fidelity import FidelityProbe
from onnxopt.pruning.importance import (
    DATA_CRITERIA,
    activation_importance,
    bn_importance,
    weight_importance,
)
from onnxopt.pruning.reconstruct import RefitSettings, reconstruct, refit_data
from onnxopt.pruning.refit_error import refit_error_importance
from onnxopt.pruning.rewrite import apply_keep, changed_tensors
from onnxopt.pruning.select import (
    Rounding,
    ensure_ranges,
    layer_macs,
    pruned_macs,
    ratio_for_macs,
    select_by_loss,
    select_by_ratio,
)
from onnxopt.pruning.sensitivity import loss_curves, probe_groups

log = logging.getLogger(__name__)

CHANNEL_GROUPS = "channel_groups"
"""Name of the channel analysis in the pass context's analysis cache."""


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = option(
        0.3,
        "fraction of channels removed (per group, or overall with scope=global)",
        low=0.0,
        high=0.95,
    )
    target_macs: float | None = option(
        None, "keep at most this fraction of the MACs instead of using ratio", low=0.05, high=1.0
    )
    scope: Literal["layer", "global", "sensitivity"] = option(
        "layer",
        "layer: each group loses `ratio`; global: one ranking across groups; sensitivity: the "
        "same MACs as `layer`, taken where a measured probe per group says they cost least",
    )
    criterion: Literal["refit_error", "output", "activation", "l1", "l2", "bn_scale"] = option(
        "refit_error", "channel importance (refit_error, output, activation: from calibration data)"
    )
    reconstruct: bool = option(
        True,
        "refit downstream layers by least squares on calibration data against the unpruned model",
    )
    round_to: int = option(
        16,
        "keep a multiple of this many channels per group (ORT CPU convs block channels by 16)",
        low=1,
        high=4096,
    )
    min_channels: int = option(8, "never keep fewer channels than this in a group", low=1)
    exclude: tuple[str, ...] = option(
        (), "node names (fnmatch patterns) whose output channels are never pruned"
    )
    samples: int = option(256, "calibration samples used for importance and reconstruction", low=1)
    positions: int = option(
        64, "spatial positions sampled per image and layer for the refit", low=1
    )
    ridge: float | None = option(
        None,
        "refit pull toward the pruned weights (relative); none: chosen per layer on held-out "
        "samples",
        low=0.0,
    )
    held_out: int = option(
        64,
        "calibration samples after `samples` that choose each layer's ridge and whether it is "
        "refit at all (0: refit unchecked)",
        low=0,
    )
    max_move: float = option(
        1.0,
        "a refit changes a layer's weights by at most this fraction of their norm",
        low=0.0,
    )
    augment: bool = option(
        True,
        "refit also on calibration samples blended with each other (and mirrored, for images)",
    )
    min_cosine: float = option(
        0.9,
        "roll back unless the outputs' cosine to the input model stays >= this",
        low=-1.0,
        high=1.0,
    )


class PrunePass(Pass):
    name = "prune"
    summary = "structured channel pruning with dependency groups and least-squares reconstruction"
    Options = PruneOptions
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
        groups = ctx.analyses.get(CHANNEL_GROUPS, analyze_channel_groups, model)
        skipped = groups.refusals()
        wanted = self._wanted(groups, skipped)
        stats: dict = {
            "groups": len([g for g in groups.groups if g.sources]),
            "prunable": len(wanted),
            "params_before": parameter_count(model),
        }
        if not wanted:
            return PassResult(model, False, stats, skipped)
        ratio, keep, macs, probes = self._select(model, groups, wanted, ctx)
        if not keep:
            rounded = f"after rounding to {self.options.round_to}"
            skipped.append(f"no group lost a channel at ratio {ratio:.3g} {rounded}")
            return PassResult(model, False, stats, skipped)
        stats.update(self._size_stats(groups, keep, macs, ratio))
        if probes is not None:
            stats["probes"] = _probe_stats(groups, keep, probes)
        teacher = copy.deepcopy(model) if self.options.reconstruct else None
        changed = changed_tensors(groups, keep)
        pruned = apply_keep(model, groups, keep)
        if teacher is not None:
            pruned = self._reconstruct(teacher, pruned, groups, keep, changed, ctx, stats)
        stats["params_after"] = parameter_count(pruned)
        stats["macs_after"] = int(count_macs(pruned).total)
        return PassResult(pruned, True, stats, skipped)

    def _select(self, model, groups: ChannelGroups, wanted: set[int], ctx: PassContext):
        """(ratio used, channels each pruned group keeps, the model's MACs, probes or None)."""
        o = self.options
        scores = self._scores(model, groups, wanted, ctx)
        rounding = Rounding(o.round_to, o.min_channels)
        normalize = o.criterion != "refit_error"  # its scores are comparable across groups
        macs = layer_macs(model, groups)
        scope = "layer" if o.scope == "sensitivity" else o.scope
        if o.target_macs is not None:
            ratio, keep = ratio_for_macs(
                model, groups, scores, macs, o.target_macs, rounding, scope, normalize
            )
        else:
            ratio, keep = o.ratio, select_by_ratio(scores, o.ratio, rounding, scope, normalize)
        probes = None
        if o.scope == "sensitivity" and keep:
            probes = self._probe(model, groups, scores, keep, rounding, ctx)
            if probes:  # none with fewer than 4 calibration samples: the uniform ratio stays
                curves = loss_curves(scores, probes, cumulative=o.criterion == "refit_error")
                target = pruned_macs(model, groups, macs, keep)
                keep = select_by_loss(model, groups, scores, curves, macs, target, rounding)
        return ratio, ensure_ranges(keep, scores, groups), macs, probes

    def _probe(self, model, groups, scores, uniform, rounding: Rounding, ctx: PassContext):
        """Probe every scored group at its `uniform` count (or one allowed step below)."""
        counts = {}
        for group, score in scores.items():
            size = len(score)
            count = len(uniform[group]) if group in uniform else rounding.lower(size, size)
            if count is not None:
                counts[group] = count
        settings = self._refit_settings(ctx) if self.options.reconstruct else None
        data = ctx.require_calibration(self.name)
        return probe_groups(model, groups, scores, counts, data, ctx.provider, settings)

    def _refit_settings(self, ctx: PassContext) -> RefitSettings:
        o = self.options
        return RefitSettings(
            o.samples,
            o.positions,
            o.ridge,
            ctx.seed,
            ctx.provider,
            held_out=o.held_out,
            max_move=o.max_move,
            augment=o.augment,
        )

    def _wanted(self, groups: ChannelGroups, skipped: list[str]) -> set[int]:
        wanted = set()
        for group in groups.prunable():
            names = [n for s in group.sources for n in (s.name, s.output)]
            hit = next(
                (p for p in self.options.exclude for n in names if fnmatch.fnmatchcase(n, p)), None
            )
            if hit is None:
                wanted.add(group.id)
            else:
                skipped.append(
                    f"{group.describe()} not pruned: excluded by exclude pattern '{hit}'"
                )
        return wanted

    def _scores(
        self, model, groups: ChannelGroups, wanted: set[int], ctx: PassContext
    ) -> dict[int, np.ndarray]:
        criterion = self.options.criterion
        if criterion in ("l1", "l2"):
            return weight_importance(model, groups, wanted, 1 if criterion == "l1" else 2)
        if criterion == "bn_scale":
            return bn_importance(model, groups, wanted)
        data = ctx.require_calibration(self.name)
        if criterion == "refit_error":
            consumers = [c for c in groups.consumers if _reads(groups, c.input, wanted)]
            grams = consumer_grams(
                model,
                consumers,
                data,
                ctx.provider,
                self.options.samples,
                self.options.positions,
                ctx.seed,
            )
            return refit_error_importance(model, groups, wanted, grams)
        axes = {c.input: groups.layouts[c.input].axis for c in groups.consumers}
        moments = channel_moments(model, axes, data, ctx.provider, self.options.samples)
        return activation_importance(model, groups, wanted, moments, criterion)

    def _size_stats(self, groups: ChannelGroups, keep, macs, ratio) -> dict:
        before = sum(groups.groups[g].size for g in keep)
        after = sum(len(k) for k in keep.values())
        return {
            "criterion": self.options.criterion,
            "ratio": round(float(ratio), 4),
            "groups_pruned": len(keep),
            "channels_before": int(before),
            "channels_after": int(after),
            "macs_before": int(macs.total),
        }

    def _reconstruct(self, teacher, pruned, groups, keep, changed, ctx: PassContext, stats: dict):
        """Refit, and measure the model before and after on the refit's held-out samples."""
        settings = self._refit_settings(ctx)
        data = refit_data(ctx.require_calibration(self.name), settings)
        probe = None
        if data.held_out is not None:
            probe = FidelityProbe(teacher, data.held_out, ctx.provider)
            stats["fidelity_data"] = f"{probe.description}, not fitted by the refit"
            stats["before_reconstruction"] = probe.measure(pruned)
        pruned, refit_stats = reconstruct(teacher, pruned, groups, keep, changed, data, settings)
        stats.update(refit_stats)
        if probe is not None:
            stats["after_reconstruction"] = probe.measure(pruned)
        return pruned


def _reads(groups: ChannelGroups, tensor: str, wanted: set[int]) -> bool:
    return any(seg.group in wanted for seg in groups.layouts[tensor].segments)


def _probe_stats(groups: ChannelGroups, keep, probes) -> list[dict]:
    """Per probed group: its probe (channels removed, output loss) and the channels it keeps."""
    return [
        {
            "group": groups.groups[g].describe(),
            "probe_removed": probe.removed,
            "probe_loss": round(probe.loss, 6),
            "kept": len(keep[g]) if g in keep else groups.groups[g].size,
            "size": groups.groups[g].size,
        }
        for g, probe in sorted(probes.items())
    ]
