"""Least-squares reconstruction of a pruned model against the unpruned one (the teacher).

After channels are removed, every Conv (2-D, ungrouped), Gemm and MatMul whose input changed is
refit in closed form so that, on calibration data, its output matches the teacher's output of
the same layer (restricted to the output channels it keeps): He et al. 2017 / ThiNet, without
fine-tuning. Layers are refit in topological waves: a layer's inputs come from the student
after every layer upstream of it has been refit, so errors do not accumulate.

Each layer's ridge, and whether it is refit at all, is chosen on held-out samples (the ones
after the fitted ones): a refit is written only where it predicts the teacher better than the
pruned weights on images it was not fitted on, and it moves the weights at most `max_move`
from the pruned ones. The stats give each layer's error in-sample and held out, and totals.

Rows are `positions` sampled output positions per image (im2col patches for a Conv). The
teacher runs once per chunk of waves and keeps only its targets at those positions (chunks
are sized to `cache_mb`); the student runs once per wave. The normal equations are accumulated
per batch, so memory is bounded by the layer's size and the cache, not by the data. The
solution is ridge-regularized toward the pruned weights: with few samples it moves only where
the data say so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups
from onnxopt.data.feeds import feeds_cut_at
from onnxopt.data.holdout import count_samples, row_range, split_unit
from onnxopt.data.sources import DataSource
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import GraphIndex, make_tensor, node_attr, set_attribute
from onnxopt.ir.shapes import ShapeInfo, infer_shapes
from onnxopt.pruning.activations import tensor_probe
from onnxopt.pruning.augment import augment
from onnxopt.pruning.lstsq import MAX_MOVE, HeldOutRefit, RefitChoice
from onnxopt.pruning.rows import LayerRows, Where, target_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitSettings:
    samples: int = 256
    positions: int = 64
    ridge: float | None = None
    seed: int = 0
    provider: str = "cpu"
    cache_mb: float = 1024.0
    held_out: int = 64
    """Samples after the fitted ones that choose each layer's ridge and whether it is refit."""
    max_move: float = MAX_MOVE
    augment: bool = True
    """Fit also on blended (and, for images, mirrored) samples; held-out ones stay real."""


@dataclass(frozen=True)
class RefitData:
    """The samples a refit fits on, and the later samples that judge it (None: none spare)."""

    fit: DataSource
    held_out: DataSource | None


MIN_HELD_OUT = 4


def refit_data(data: DataSource, settings: RefitSettings) -> RefitData:
    """The first `samples` calibration samples to fit, the next `held_out` to judge the fit.

    With fewer samples than both, a quarter of what there is is held out (none below
    MIN_HELD_OUT: the refit is then applied unchecked). With a static batch both parts are
    whole batches (a model of batch 16 cannot run 12 rows): a calibration set of one batch
    is fitted whole, with nothing held out."""
    total, reason = count_samples(data) if settings.held_out else (0, "no held-out samples")
    if reason:
        return RefitData(data, None)
    unit = split_unit(data)
    held = settings.held_out
    fit = settings.samples
    if total < fit + held:
        held = min(held, total // 4)
        fit = total - held
    held -= held % unit
    fit -= fit % unit
    if held < MIN_HELD_OUT or fit == 0:
        return RefitData(data, None)
    return RefitData(
        row_range(data, 0, fit, "refit samples"),
        row_range(data, fit, fit + held, "refit held-out samples"),
    )


def refit_candidates(model: onnx.ModelProto, changed: set[str]) -> list[onnx.NodeProto]:
    """Layers (topological order) whose input depends on a changed tensor and that can be refit."""
    index = GraphIndex(model.graph)
    affected = set(changed)
    found = []
    for node in model.graph.node:
        if not any(name in affected for name in node.input):
            continue
        affected.update(o for o in node.output if o)
        if _refittable(node, index) and node.input[0] in affected:
            found.append(node)
    return found


def _refittable(node: onnx.NodeProto, index: GraphIndex) -> bool:
    weight = index.constant(node.input[1]) if len(node.input) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return False
    if len(node.input) > 2 and node.input[2] and not index.is_constant(node.input[2]):
        return False
    if node.op_type == "Conv":
        return weight.ndim == 4 and int(node_attr(node, "group", 1)) == 1
    if node.op_type == "Gemm":
        return not node_attr(node, "transA", 0)
    return node.op_type == "MatMul" and weight.ndim == 2


def waves(model: onnx.ModelProto, layers: list[onnx.NodeProto]) -> list[list[str]]:
    """Layers (by output name) in waves: a layer's wave follows every refit layer upstream."""
    wanted = {node.output[0] for node in layers}
    level: dict[str, int] = {}
    depth: dict[str, int] = {}
    for node in model.graph.node:
        upstream = max((depth.get(name, -1) for name in node.input if name), default=-1)
        if node.output[0] in wanted:
            level[node.output[0]] = upstream + 1
            upstream += 1
        for name in node.output:
            if name:
                depth[name] = upstream
    count = max(level.values(), default=-1) + 1
    return [[name for name in level if level[name] == w] for w in range(count)]


class Reconstruction:
    """One refit of `student` (mutated) toward `teacher` on `data`."""

    def __init__(
        self,
        teacher,
        student,
        groups: ChannelGroups,
        keep,
        data: RefitData,
        settings: RefitSettings,
        teacher_shapes: ShapeInfo | None = None,
    ):
        self.teacher, self.student = teacher, student
        self.groups, self.keep = groups, keep
        self.data, self.settings = data, settings
        self.teacher_shapes = (
            teacher_shapes if teacher_shapes is not None else infer_shapes(teacher)
        )
        self.choices: dict[str, RefitChoice] = {}

    def run(self, changed: set[str]) -> dict:
        layers = refit_candidates(self.student, changed)
        index = GraphIndex(self.student.graph)
        self.nodes = {node.output[0]: node for node in layers}
        self.number = {node.output[0]: i for i, node in enumerate(layers)}
        self.rows = {
            name: LayerRows(node, index.constant(node.input[1]).shape)
            for name, node in self.nodes.items()
        }
        schedule = waves(self.student, layers)
        chunks = self._chunks(schedule)
        self.ridges: list[float] = []
        for chunk in chunks:
            cache = self._teacher_targets([name for wave in chunk for name in wave])
            for wave in chunk:
                self._refit_wave(wave, cache)
        remove_dead_code(self.student)
        return {
            "layers_refit": sum(c.applied for c in self.choices.values()),
            "layers_kept_pruned": sum(not c.applied for c in self.choices.values()),
            "waves": len(schedule),
            "teacher_passes": len(chunks),
            "ridge_median": float(np.median(self.ridges)) if self.ridges else None,
            **_error_totals(self.choices.values()),
            "layers": [_choice_stats(name, c) for name, c in self.choices.items()],
        }

    def _feeds(self):
        """(held out?, feed): the fit samples' batches, then the held-out ones."""
        fit = feeds_cut_at(self.data.fit, self.settings.samples)
        previous = None
        for batch, feed in enumerate(fit):
            yield False, feed
            if self.settings.augment:
                mixed = augment(feed, previous, self.settings.seed, batch)
                if mixed is not None:
                    yield False, mixed
            previous = feed
        if self.data.held_out is not None:
            yield from ((True, feed) for feed in self.data.held_out)

    def _chunks(self, schedule: list[list[str]]) -> list[list[list[str]]]:
        """Consecutive waves whose cached teacher targets fit in `cache_mb`."""
        budget = self.settings.cache_mb * 2**20
        chunks: list[list[list[str]]] = []
        used = budget + 1
        for wave in schedule:
            size = sum(self._cache_bytes(name) for name in wave)
            if used + size > budget or not chunks:
                chunks.append([])
                used = 0
            chunks[-1].append(wave)
            used += size
        return chunks

    def _cache_bytes(self, name: str) -> float:
        kept = self.groups.kept_entries(name, self.keep)
        shape = self.teacher_shapes.shape(name)
        channels = (
            len(kept)
            if kept is not None
            else (shape[-1 if self.rows[name].op_type == "MatMul" else 1] if shape else 1)
        )
        per_sample = target_rows(shape, self.rows[name].op_type, self.settings.positions)
        return (
            4.0
            * self.settings.samples
            * per_sample
            * (channels if isinstance(channels, int) else 1)
        )

    def _teacher_targets(self, names: list[str]) -> dict[str, list[tuple[Where, np.ndarray]]]:
        reader = tensor_probe(
            self.teacher, sorted(names), self.settings.provider, self.teacher_shapes
        )
        cache: dict[str, list] = {name: [] for name in names}
        for batch, (_, feed) in enumerate(self._feeds()):
            outputs = reader.read(feed)
            for name in names:
                rows = self.rows[name]
                y = outputs[name]
                kept = self.groups.kept_entries(name, self.keep)
                if kept is not None:
                    y = np.take(y, kept, axis=rows.out_axis(y.ndim))
                rng = np.random.default_rng([self.settings.seed, self.number[name], batch])
                where = rows.sample(y, self.settings.positions, rng)
                cache[name].append(
                    (where, np.ascontiguousarray(rows.targets(y, where), np.float32))
                )
        return cache

    def _refit_wave(self, wave: list[str], cache: dict) -> None:
        inputs = sorted({self.nodes[name].input[0] for name in wave})
        reader = tensor_probe(self.student, inputs, self.settings.provider)
        problems = {name: HeldOutRefit(self.nodes[name].op_type != "MatMul") for name in wave}
        for batch, (held_out, feed) in enumerate(self._feeds()):
            xs = reader.read(feed)
            for name in wave:
                where, targets = cache[name][batch]
                x = self.rows[name].inputs(xs[self.nodes[name].input[0]], where)
                problems[name].add(x, targets, held_out)
        index = GraphIndex(self.student.graph)
        for name in wave:
            layer = LAYERS[self.nodes[name].op_type]
            w0, b0 = layer.initial(index, self.nodes[name])
            choice = problems[name].choose(w0, b0, self.settings.ridge, self.settings.max_move)
            if choice.applied:
                layer.write(self.student, index, self.nodes[name], choice)
                self.ridges.append(choice.ridge)
            self.choices[name] = choice
            del cache[name]


def reconstruct(
    teacher: onnx.ModelProto,
    student: onnx.ModelProto,
    groups: ChannelGroups,
    keep: dict[int, np.ndarray],
    changed: set[str],
    data: RefitData,
    settings: RefitSettings,
    teacher_shapes: ShapeInfo | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Refit the student's layers downstream of `changed` tensors; returns (model, stats).
    `teacher_shapes`: the teacher's shapes when the caller has them (else inferred)."""
    refit = Reconstruction(teacher, student, groups, keep, data, settings, teacher_shapes)
    stats = refit.run(changed)
    return student, stats


# --- per-layer statistics --------------------------------------------------------------------


def _error_totals(choices) -> dict:
    """Mean relative error over the layers: in-sample, held-out, and the pruned weights'."""
    choices = list(choices)
    checked = [c for c in choices if c.held_out_error is not None]

    def mean(values) -> float | None:
        values = list(values)
        return round(float(np.mean(values)), 6) if values else None

    return {
        "refit_error_in_sample": mean(c.fit_error for c in choices),
        "refit_error_held_out": mean(c.held_out_error for c in checked),
        "unrefit_error_held_out": mean(c.unrefit_error for c in checked),
    }


def _choice_stats(name: str, choice: RefitChoice) -> dict:
    def rounded(value):
        return None if value is None else round(float(value), 6)

    return {
        "layer": name,
        "applied": choice.applied,
        "ridge": choice.ridge,
        "move": rounded(choice.move),
        "error_in_sample": rounded(choice.fit_error),
        "error_held_out": rounded(choice.held_out_error),
        "unrefit_error_held_out": rounded(choice.unrefit_error),
    }


# --- the layers a refit can write: their pruned weights, and writing a refit back -------------


class _Conv:
    @staticmethod
    def initial(index, node):
        weight = index.constant(node.input[1])
        w0 = weight.reshape(weight.shape[0], -1).T.astype(np.float64)
        return w0, _bias(index, node, weight.shape[0])

    @staticmethod
    def write(model, index, node, choice: RefitChoice):
        weight = index.constant(node.input[1])
        value = choice.w.T.reshape(weight.shape).astype(weight.dtype)
        _set_input(model, node, 1, value, "weight_refit")
        _set_input(model, node, 2, choice.bias.astype(weight.dtype), "bias_refit")


class _Gemm:
    @staticmethod
    def initial(index, node):
        weight = index.constant(node.input[1])
        trans_b = bool(node_attr(node, "transB", 0))
        w0 = ((weight.T if trans_b else weight) * float(node_attr(node, "alpha", 1.0))).astype(
            np.float64
        )
        return w0, _bias(index, node, w0.shape[1]) * float(node_attr(node, "beta", 1.0))

    @staticmethod
    def write(model, index, node, choice: RefitChoice):
        weight = index.constant(node.input[1])
        trans_b = bool(node_attr(node, "transB", 0))
        value = (choice.w.T if trans_b else choice.w).astype(weight.dtype)
        _set_input(model, node, 1, value, "weight_refit")
        _set_input(model, node, 2, choice.bias.astype(weight.dtype), "bias_refit")
        set_attribute(node, "alpha", 1.0)
        set_attribute(node, "beta", 1.0)


class _MatMul:
    @staticmethod
    def initial(index, node):
        return index.constant(node.input[1]).astype(np.float64), 0.0

    @staticmethod
    def write(model, index, node, choice: RefitChoice):
        weight = index.constant(node.input[1])
        _set_input(model, node, 1, choice.w.astype(weight.dtype), "weight_refit")


LAYERS = {"Conv": _Conv, "Gemm": _Gemm, "MatMul": _MatMul}


def _bias(index: GraphIndex, node: onnx.NodeProto, outputs: int) -> np.ndarray:
    """The layer's bias as a vector of `outputs` (zeros when it has none)."""
    if len(node.input) > 2 and node.input[2]:
        value = np.asarray(index.constant(node.input[2]), np.float64)
        return np.broadcast_to(value.reshape(-1) if value.size > 1 else value, (outputs,)).copy()
    return np.zeros(outputs)


def _set_input(
    model: onnx.ModelProto, node: onnx.NodeProto, position: int, value: np.ndarray, tag: str
) -> None:
    taken = {t.name for t in model.graph.initializer}
    base = f"{node.name or node.output[0]}.{tag}"
    name, counter = base, 1
    while name in taken:
        name, counter = f"{base}_{counter}", counter + 1
    model.graph.initializer.append(make_tensor(name, value))
    while len(node.input) <= position:
        node.input.append("")
    node.input[position] = name
