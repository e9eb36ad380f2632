"""Channel importance per dependency group, from weights or from calibration activations.

Every criterion collects per-channel evidence from several places (the layers that create
the group's channels, the norms after them, the layers that consume them), normalizes each
piece by its mean so that no single layer dominates, and averages them per channel:

- `l1` / `l2`: norms of the weight slices of every layer that creates, filters (depthwise)
  or consumes the channel.
- `bn_scale`: |gamma| of the BatchNormalizations on the channel (network slimming); groups
  without one fall back to `l1`.
- `activation`: mean |x| of the channel where each consumer reads it (calibration data).
- `output`: E[x^2] times the squared norm of the consumer's weights for that channel: the
  expected energy the channel adds to each consumer's output, i.e. the error its removal
  causes before any reconstruction (calibration data).

`refit_error` (the error left after reconstruction) lives in `refit_error.py`.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, Layout
from onnxopt.ir.graph import GraphIndex

WEIGHT_KINDS = ("conv", "depthwise", "conv_transpose", "gemm", "matmul")
CRITERIA = ("refit_error", "output", "activation", "l1", "l2", "bn_scale")
DATA_CRITERIA = ("refit_error", "output", "activation")


class _Evidence:
    """Per-group sums of normalized per-channel evidence and how many pieces each channel got."""

    def __init__(self, groups: ChannelGroups, wanted: set[int]) -> None:
        self.sums = {g.id: np.zeros(g.size) for g in groups.groups if g.id in wanted}
        self.counts = {g: np.zeros_like(s) for g, s in self.sums.items()}

    def add(self, layout: Layout, per_entry: np.ndarray) -> None:
        per_channel = (
            np.asarray(per_entry, np.float64).reshape(layout.channels, layout.block).sum(1)
        )
        mean = per_channel.mean() if per_channel.size else 0.0
        normalized = per_channel / mean if mean > 0 else np.ones_like(per_channel)
        offset = 0
        for seg in layout.segments:
            if seg.group in self.sums:
                self.sums[seg.group][seg.start : seg.stop] += normalized[offset : offset + seg.size]
                self.counts[seg.group][seg.start : seg.stop] += 1
            offset += seg.size

    def result(self) -> dict[int, np.ndarray]:
        return {g: s / np.maximum(self.counts[g], 1) for g, s in self.sums.items()}

    def missing(self) -> set[int]:
        return {g for g, c in self.counts.items() if not np.all(c > 0)}


def _norm_along(value: np.ndarray, axis: int, order: int) -> np.ndarray:
    moved = np.moveaxis(np.asarray(value, np.float64), axis, 0).reshape(value.shape[axis], -1)
    return np.abs(moved).sum(1) if order == 1 else np.sqrt((moved**2).sum(1))


def weight_importance(
    model: onnx.ModelProto, groups: ChannelGroups, wanted: set[int], order: int = 1
) -> dict[int, np.ndarray]:
    """L1 (order 1) or L2 (order 2) norms of every weight slice that belongs to a channel."""
    index = GraphIndex(model.graph)
    evidence = _Evidence(groups, wanted)
    for role in groups.roles:
        if role.kind not in WEIGHT_KINDS:
            continue
        node = model.graph.node[role.node]
        for param in role.params:
            if param.input_index == 1:
                weight = index.constant(node.input[1])
                evidence.add(groups.layouts[param.tensor], _norm_along(weight, param.axis, order))
    return evidence.result()


def bn_importance(
    model: onnx.ModelProto, groups: ChannelGroups, wanted: set[int]
) -> dict[int, np.ndarray]:
    """|gamma| of the BatchNormalizations; groups without one get their L1 importance."""
    index = GraphIndex(model.graph)
    evidence = _Evidence(groups, wanted)
    for role in groups.roles:
        if role.kind == "batch_norm":
            node = model.graph.node[role.node]
            gamma = index.constant(node.input[1])
            evidence.add(groups.layouts[node.output[0]], np.abs(gamma))
    scores = evidence.result()
    fallback = evidence.missing()
    if fallback:
        scores.update(weight_importance(model, groups, fallback, 1))
    return scores


def activation_importance(
    model: onnx.ModelProto,
    groups: ChannelGroups,
    wanted: set[int],
    moments: dict[str, tuple[np.ndarray, np.ndarray]],
    criterion: str,
) -> dict[int, np.ndarray]:
    """`activation` or `output` importance from per-entry (mean |x|, mean x^2) of consumer inputs.

    Groups no consumer reads (only sources) fall back to L1.
    """
    index = GraphIndex(model.graph)
    evidence = _Evidence(groups, wanted)
    for consumer in groups.consumers:
        if consumer.input not in moments:
            continue
        mean_abs, mean_sq = moments[consumer.input]
        if criterion == "activation":
            per_entry = mean_abs
        else:
            weight = index.constant(model.graph.node[consumer.node].input[consumer.weight_index])
            per_entry = mean_sq * _norm_along(weight, consumer.weight_axis, 2) ** 2
        evidence.add(groups.layouts[consumer.input], per_entry)
    scores = evidence.result()
    fallback = evidence.missing()
    if fallback:
        scores.update(weight_importance(model, groups, fallback, 1))
    return scores
