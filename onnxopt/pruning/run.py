"""One pruning run: score channels, choose what each group keeps, rewrite, refit.

`PruneRun.prune` drives the modules of this package: importance (`importance.py`,
`refit_error.py`, from activations read through the tensor probe), selection (`select.py`,
`sensitivity.py` for scope=sensitivity), the rewrite (`rewrite.py`) and the least-squares refit
(`reconstruct.py`).
"""

from __future__ import annotations

import copy
import fnmatch

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups
from onnxopt.analyses.macs import count_macs
from onnxopt.analyses.stats import parameter_count
from onnxopt.data.sources import DataSource
from onnxopt.errors import InputError
from onnxopt.ir.shapes import ShapeInfo
from onnxopt.pruning.activations import channel_moments, consumer_grams
from onnxopt.pruning.importance import (
    activation_importance,
    bn_importance,
    weight_importance,
)
from onnxopt.pruning.options import PruneOptions
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
from onnxopt.runtime.fidelity import ReferenceScorer


class PruneRun:
    def __init__(
        self,
        options: PruneOptions,
        provider: str,
        seed: int,
        data: DataSource | None,
        shapes: ShapeInfo | None = None,
    ) -> None:
        """`shapes`: those of the model `prune` will be given, when the caller has them."""
        self.options = options
        self.shapes = shapes
        self.provider = provider
        self.seed = seed
        self.data = data
        self.stats: dict = {}
        self.skipped: list[str] = []

    def _data(self) -> DataSource:
        if self.data is None:
            raise InputError("pass 'prune' needs calibration data for this configuration")
        return self.data

    def prune(self, model: onnx.ModelProto, groups: ChannelGroups) -> onnx.ModelProto | None:
        """The pruned (and refit) model, or None when no channel goes; `stats` and `skipped`
        say what was done and what was refused."""
        skipped = self.skipped
        skipped.extend(groups.refusals())
        wanted = self._wanted(groups, skipped)
        stats = self.stats
        stats.update(
            {
                "groups": len([g for g in groups.groups if g.sources]),
                "prunable": len(wanted),
                "params_before": parameter_count(model),
            }
        )
        if not wanted:
            return None
        ratio, keep, macs, probes = self._select(model, groups, wanted)
        if not keep:
            rounded = f"after rounding to {self.options.round_to}"
            skipped.append(f"no group lost a channel at ratio {ratio:.3g} {rounded}")
            return None
        stats.update(self._size_stats(groups, keep, macs, ratio))
        if probes is not None:
            stats["probes"] = _probe_stats(groups, keep, probes)
        teacher = copy.deepcopy(model) if self.options.reconstruct else None
        changed = changed_tensors(groups, keep)
        pruned = apply_keep(model, groups, keep)
        if teacher is not None:
            pruned = self._reconstruct(teacher, pruned, groups, keep, changed, stats)
        stats["params_after"] = parameter_count(pruned)
        stats["macs_after"] = int(count_macs(pruned).total)
        return pruned

    def _select(self, model, groups: ChannelGroups, wanted: set[int]):
        """(ratio used, channels each pruned group keeps, the model's MACs, probes or None)."""
        o = self.options
        scores = self._scores(model, groups, wanted)
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
            probes = self._probe(model, groups, scores, keep, rounding)
            if probes:  # none with fewer than 4 calibration samples: the uniform ratio stays
                curves = loss_curves(scores, probes, cumulative=o.criterion == "refit_error")
                target = pruned_macs(model, groups, macs, keep)
                keep = select_by_loss(model, groups, scores, curves, macs, target, rounding)
        return ratio, ensure_ranges(keep, scores, groups), macs, probes

    def _probe(self, model, groups, scores, uniform, rounding: Rounding):
        """Probe every scored group at its `uniform` count (or one allowed step below)."""
        counts = {}
        for group, score in scores.items():
            size = len(score)
            count = len(uniform[group]) if group in uniform else rounding.lower(size, size)
            if count is not None:
                counts[group] = count
        settings = self._refit_settings() if self.options.reconstruct else None
        data = self._data()
        return probe_groups(
            model, groups, scores, counts, data, self.provider, settings, self.shapes
        )

    def _refit_settings(self) -> RefitSettings:
        o = self.options
        return RefitSettings(
            o.samples,
            o.positions,
            o.ridge,
            self.seed,
            self.provider,
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

    def _scores(self, model, groups: ChannelGroups, wanted: set[int]) -> dict[int, np.ndarray]:
        criterion = self.options.criterion
        if criterion in ("l1", "l2"):
            return weight_importance(model, groups, wanted, 1 if criterion == "l1" else 2)
        if criterion == "bn_scale":
            return bn_importance(model, groups, wanted)
        data = self._data()
        if criterion == "refit_error":
            consumers = [c for c in groups.consumers if _reads(groups, c.input, wanted)]
            grams = consumer_grams(
                model,
                consumers,
                data,
                self.provider,
                self.options.samples,
                self.options.positions,
                self.seed,
            )
            return refit_error_importance(model, groups, wanted, grams)
        axes = {c.input: groups.layouts[c.input].axis for c in groups.consumers}
        moments = channel_moments(model, axes, data, self.provider, self.options.samples)
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

    def _reconstruct(self, teacher, pruned, groups, keep, changed, stats: dict):
        """Refit, and measure the model before and after on the refit's held-out samples."""
        settings = self._refit_settings()
        data = refit_data(self._data(), settings)
        probe = None
        if data.held_out is not None:
            probe = ReferenceScorer(teacher, data.held_out, None, self.provider)
            stats["fidelity_data"] = f"{data.held_out.description}, not fitted by the refit"
            stats["before_reconstruction"] = probe.worst(pruned)
        pruned, refit_stats = reconstruct(
            teacher, pruned, groups, keep, changed, data, settings, self.shapes
        )
        stats.update(refit_stats)
        if probe is not None:
            stats["after_reconstruction"] = probe.worst(pruned)
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
