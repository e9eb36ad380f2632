"""Measured sensitivity of each channel group: what pruning it alone costs the model's outputs.

A group's refit error (`refit_error` scores) says how well its consumers can be refit without
the removed channels, relative to their own output; it does not say how much of that error
reaches the model's outputs after every downstream layer is refit too. On MobileNetV2 that
reach differs 20-fold between groups at the same local error: channels of a residual stream
cost far more than the hidden channels of an inverted-residual block.

The probe measures it: each group alone loses its probe count of channels (its lowest scores),
the pruned model is reconstructed on a few calibration samples like the real refit, and the
output cosine loss against the unpruned model is measured on the next, held-out samples
(measured in-sample, a layer fit from few rows, like a classifier after pooling, looks
perfect). The loss per unit of the group's refit error is the group's weight in the allocation
(`select.select_by_loss`).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups
from onnxopt.data.feeds import feed_rows, feeds_up_to, take_rows
from onnxopt.data.holdout import split_unit
from onnxopt.data.sources import DataSource, Feed, IterableSource, input_specs
from onnxopt.ir.shapes import ShapeInfo
from onnxopt.pruning.reconstruct import RefitData, RefitSettings, reconstruct
from onnxopt.pruning.rewrite import apply_keep, changed_tensors
from onnxopt.pruning.select import Keep, top_channels
from onnxopt.runtime.fidelity import ReferenceScorer

PROBE_SAMPLES = 32
"""Calibration samples each probe refits on; as many again (the next ones) measure it."""


@dataclass(frozen=True)
class Probe:
    """One group's probe: channels removed and the output cosine loss left after the refit."""

    removed: int
    loss: float


def split_samples(data: DataSource, first: int) -> tuple[list[Feed], list[Feed]] | None:
    """The first `first` samples and the next as many (fewer: half and half), or None (< 4,
    or, for a model of static batch, less than a whole batch each)."""
    feeds = list(feeds_up_to(data, 2 * first))
    total = sum(feed_rows(f) for f in feeds)
    unit = split_unit(data)
    cut = min(max(first, unit), total // 2)
    cut -= cut % unit
    if total < 4 or cut == 0:
        return None
    fit, rest = take_rows(feeds, cut)
    held, _ = take_rows(rest, cut)
    if unit == 1:
        return [fit], [held]
    return _batches(fit, unit), _batches(held, unit)


def _batches(feed: Feed, size: int) -> list[Feed]:
    return [{k: v[i : i + size] for k, v in feed.items()} for i in range(0, feed_rows(feed), size)]


def probe_groups(
    teacher: onnx.ModelProto,
    groups: ChannelGroups,
    scores: dict[int, np.ndarray],
    counts: dict[int, int],
    data: DataSource,
    provider: str,
    settings: RefitSettings | None,
    shapes: ShapeInfo | None = None,
) -> dict[int, Probe]:
    """Probe each group of `counts` (group -> channels it keeps in the probe); refit with
    `settings` (None: measure the pruned model as it is)."""
    split = split_samples(data, PROBE_SAMPLES)
    if split is None:
        return {}
    specs = input_specs(teacher)
    fit = RefitData(IterableSource(split[0], specs), None)  # the probe's own held-out judges
    held = ReferenceScorer(teacher, IterableSource(split[1], specs), None, provider)
    refit = (
        None
        if settings is None
        else dataclasses.replace(settings, samples=PROBE_SAMPLES, held_out=0)
    )
    probes = {}
    for group, count in sorted(counts.items()):
        score = scores[group]
        if count >= len(score):
            continue
        keep: Keep = {group: top_channels(score, count)}
        student = apply_keep(copy.deepcopy(teacher), groups, keep)
        if refit is not None:
            changed = changed_tensors(groups, keep)
            student, _ = reconstruct(teacher, student, groups, keep, changed, fit, refit, shapes)
        loss = 1.0 - float(held.worst(student)["cosine"])
        removed = len(score) - count
        probes[group] = Probe(removed, max(loss, 0.0))
    return probes


def loss_curves(
    scores: dict[int, np.ndarray], probes: dict[int, Probe], cumulative: bool
) -> dict[int, np.ndarray]:
    """Each probed group's estimated output loss with its k lowest-scored channels removed
    (k = 0..size): the probe's loss scaled along the group's refit error curve (`cumulative`
    scores, as `refit_error` gives), else linearly in k.

    A probe that measured no loss is given the smallest loss any probe measured: removing
    more than the probe did is not free. Beyond the probe the loss grows at least linearly: a
    consumer fit from fewer rows than inputs (a classifier after pooling) shows a flat refit
    error curve that the model's outputs do not follow.
    """
    measured = [p.loss for p in probes.values() if p.loss > 0]
    smallest = min(measured) if measured else 1.0
    curves = {}
    for group, probe in probes.items():
        size = len(scores[group])
        if cumulative:
            error = np.concatenate([[0.0], np.sort(np.asarray(scores[group], np.float64))])
        else:
            error = np.arange(size + 1, dtype=np.float64)
        loss = probe.loss if probe.loss > 0 else smallest
        curve = error * (loss / max(error[probe.removed], 1e-12))
        beyond = np.arange(size + 1) > probe.removed
        curve[beyond] = np.maximum(
            curve[beyond], loss * np.arange(size + 1)[beyond] / probe.removed
        )
        curves[group] = curve
    return curves
