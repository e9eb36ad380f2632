"""Which channels each group keeps: counts from a ratio or a MACs target, then the top scores.

Counts are rounded to the nearest multiple of `round_to` (or the whole group), never below
`min_channels`: ONNX Runtime's CPU convolutions process channels in blocks, so an unrounded
count costs nearly as much as the next multiple. Channels are then kept by descending score
(ties: lower index first) and returned sorted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, kept_entries
from onnxopt.analyses.macs import count_macs
from onnxopt.ir.graph import node_attr

log = logging.getLogger(__name__)

Keep = dict[int, np.ndarray]
LAYER_KINDS = ("conv", "depthwise", "conv_transpose", "gemm", "matmul")


@dataclass(frozen=True)
class Rounding:
    round_to: int = 16
    min_channels: int = 8

    def count(self, target: float, size: int) -> int:
        """The allowed channel count nearest `target` (ties: the larger one)."""
        return min(self._allowed(size), key=lambda c: (abs(c - target), -c))

    def lower(self, count: int, size: int) -> int | None:
        """The largest allowed count below `count`, or None."""
        below = [c for c in self._allowed(size) if c < count]
        return max(below) if below else None

    def _allowed(self, size: int) -> list[int]:
        floor = min(self.min_channels, size)
        candidates = {c for c in range(self.round_to, size + 1, self.round_to)} | {size}
        return sorted(c for c in candidates if c >= floor) or [size]


def top_channels(score: np.ndarray, count: int) -> np.ndarray:
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    return np.sort(order[:count]).astype(np.int64)


def select_by_ratio(
    scores: dict[int, np.ndarray],
    ratio: float,
    rounding: Rounding,
    scope: str = "layer",
    normalize: bool = True,
) -> Keep:
    """Remove `ratio` of the channels: of each group ('layer') or ranked across groups ('global').

    A global ranking divides each group's scores by their mean first unless `normalize` is
    False (scores already comparable across groups).
    """
    if scope == "global":
        targets = _global_targets(scores, ratio, normalize)
    else:
        targets = {g: len(s) * (1.0 - ratio) for g, s in scores.items()}
    keep = {}
    for group, score in sorted(scores.items()):
        count = rounding.count(targets[group], len(score))
        if count < len(score):
            keep[group] = top_channels(score, count)
    return keep


def _global_targets(
    scores: dict[int, np.ndarray], ratio: float, normalize: bool
) -> dict[int, float]:
    """Per-group kept counts when one threshold on (mean-normalized) scores removes `ratio`."""
    normalized = {
        g: (s / s.mean() if s.mean() > 0 else np.ones_like(s)) if normalize else s
        for g, s in scores.items()
    }
    everything = np.sort(np.concatenate(list(normalized.values())))
    cut = math.floor(ratio * everything.size)
    if cut == 0:
        return {g: float(len(s)) for g, s in scores.items()}
    threshold = everything[cut - 1]
    return {g: float(np.sum(s > threshold)) for g, s in normalized.items()}


def ensure_ranges(keep: Keep, scores: dict[int, np.ndarray], groups: ChannelGroups) -> Keep:
    """Keep at least one channel in every Split range (a Split output cannot be empty)."""
    for seg in groups.ranges:
        kept = keep.get(seg.group)
        if kept is None or np.any((kept >= seg.start) & (kept < seg.stop)):
            continue
        best = seg.start + int(np.argmax(scores[seg.group][seg.start : seg.stop]))
        keep[seg.group] = np.sort(np.append(kept, best))
    return keep


# --- MACs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacsModel:
    """The model's total MACs and the share of each prunable layer (node index -> MACs)."""

    total: float
    layers: dict[int, float]


def layer_macs(model: onnx.ModelProto, groups: ChannelGroups) -> MacsModel:
    """MACs per sample (dynamic dims bound to 1) from `count_macs`, keyed by node index."""
    report = count_macs(model)
    by_name = {layer.name: float(layer.macs) for layer in report.per_layer}
    layers = {}
    for role in groups.roles:
        if role.kind in LAYER_KINDS:
            node = model.graph.node[role.node]
            name = node.name or f"{node.op_type}_{role.node}"
            if name in by_name:
                layers[role.node] = by_name[name]
    return MacsModel(float(report.total), layers)


def pruned_macs(
    model: onnx.ModelProto, groups: ChannelGroups, macs: MacsModel, keep: Keep
) -> float:
    """Total MACs after pruning: each layer scales with its kept input and output fractions."""
    total = macs.total
    for position, value in macs.layers.items():
        node = model.graph.node[position]
        factor = _kept_fraction(groups, node.output[0], keep)
        if node.op_type != "Conv" or int(node_attr(node, "group", 1)) == 1:
            factor *= _kept_fraction(groups, node.input[0], keep)
        total -= value * (1.0 - factor)
    return total


def _kept_fraction(groups: ChannelGroups, tensor: str, keep: Keep) -> float:
    layout = groups.layouts.get(tensor)
    if layout is None or layout.size == 0:
        return 1.0
    return len(kept_entries(layout, keep)) / layout.size


def ratio_for_macs(
    model: onnx.ModelProto,
    groups: ChannelGroups,
    scores: dict[int, np.ndarray],
    macs: MacsModel,
    target: float,
    rounding: Rounding,
    scope: str,
    normalize: bool = True,
) -> tuple[float, Keep]:
    """The smallest ratio whose selection keeps at most `target` (a fraction) of the MACs."""
    total = macs.total
    lo, hi = 0.0, 0.95
    best = (hi, select_by_ratio(scores, hi, rounding, scope, normalize))
    for _ in range(14):
        mid = (lo + hi) / 2
        keep = select_by_ratio(scores, mid, rounding, scope, normalize)
        if pruned_macs(model, groups, macs, keep) <= target * total:
            best, hi = (mid, keep), mid
        else:
            lo = mid
    return best


def select_by_loss(
    model: onnx.ModelProto,
    groups: ChannelGroups,
    scores: dict[int, np.ndarray],
    losses: dict[int, np.ndarray],
    macs: MacsModel,
    target: float,
    rounding: Rounding,
) -> Keep:
    """Remove channels where they cost the least output loss per MAC saved, one allowed count
    at a time, until at most `target` MACs are left (or nothing more can go).

    `losses[g][k]` is group g's estimated loss with its k lowest-scored channels removed; groups
    without a curve are left whole.
    """
    kept = {g: len(scores[g]) for g in losses}
    keep: Keep = {}
    current = pruned_macs(model, groups, macs, keep)
    while current > target:
        steps = []  # (loss added per MAC saved, loss added, group, count, MACs after)
        for group, curve in losses.items():
            size = len(scores[group])
            count = rounding.lower(kept[group], size)
            if count is None:
                continue
            trial = {**keep, group: top_channels(scores[group], count)}
            after = pruned_macs(model, groups, macs, trial)
            if after < current:
                added = curve[size - count] - curve[size - kept[group]]
                steps.append((added / (current - after), added, group, count, after))
        if not steps:
            break
        step = min(steps)
        # A step that reaches the target at once beats going on at the best rate when it adds
        # less loss than the rest of the way would at that rate (avoids overshooting it).
        finishing = [s for s in steps if s[4] <= target]
        if finishing:
            last = min(finishing, key=lambda s: s[1])
            if last[1] <= step[0] * (current - target):
                step = last
        _, _, group, count, current = step
        kept[group] = count
        keep[group] = top_channels(scores[group], count)
    return keep
