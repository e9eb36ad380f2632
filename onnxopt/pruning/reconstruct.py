"""Least-squares reconstruction of a pruned model against the unpruned one (the teacher).

After channels are removed, every Conv (2-D, ungrouped), Gemm and MatMul whose input changed is
refit in closed form so that, on calibration data, its output matches the teacher's output of
the same layer (restricted to the output channels it keeps): He et al. 2017 / ThiNet, without
fine-tuning. Layers are refit in topological waves: a layer's inputs come from the student
after every layer upstream of it has been refit, so errors do not accumulate.

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
from onnxopt.data import DataSource
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import GraphIndex, make_tensor, node_attr, set_attribute
from onnxopt.ir.shapes import infer_shapes
from onnxopt.pruning.activations import TensorReader, batches
from onnxopt.pruning.lstsq import FoldedEquations
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
        data: DataSource,
        settings: RefitSettings,
    ):
        self.teacher, self.student = teacher, student
        self.groups, self.keep = groups, keep
        self.data, self.settings = data, settings
        self.teacher_shapes = infer_shapes(teacher)

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
            "layers_refit": len(layers),
            "waves": len(schedule),
            "teacher_passes": len(chunks),
            "ridge_median": float(np.median(self.ridges)) if self.ridges else None,
        }

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
        reader = TensorReader(
            self.teacher, sorted(names), self.settings.provider, self.teacher_shapes
        )
        cache: dict[str, list] = {name: [] for name in names}
        for batch, feed in enumerate(batches(self.data, self.settings.samples)):
            outputs = reader(feed)
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
        reader = TensorReader(self.student, inputs, self.settings.provider)
        problems = {name: FoldedEquations(self.nodes[name].op_type != "MatMul") for name in wave}
        for batch, feed in enumerate(batches(self.data, self.settings.samples)):
            xs = reader(feed)
            for name in wave:
                where, targets = cache[name][batch]
                x = self.rows[name].inputs(xs[self.nodes[name].input[0]], where)
                problems[name].add(x, targets, batch)
        index = GraphIndex(self.student.graph)
        for name in wave:
            node = self.nodes[name]
            self.ridges.append(
                WRITERS[node.op_type](
                    self.student, index, node, problems[name], self.settings.ridge
                )
            )
            del cache[name]


def reconstruct(
    teacher: onnx.ModelProto,
    student: onnx.ModelProto,
    groups: ChannelGroups,
    keep: dict[int, np.ndarray],
    changed: set[str],
    data: DataSource,
    settings: RefitSettings,
) -> tuple[onnx.ModelProto, dict]:
    """Refit the student's layers downstream of `changed` tensors; returns (model, stats)."""
    stats = Reconstruction(teacher, student, groups, keep, data, settings).run(changed)
    return student, stats


# --- writing the refit weights back ----------------------------------------------------------


def _write_conv(model, index, node, problem, ridge):
    weight = index.constant(node.input[1])
    w0 = weight.reshape(weight.shape[0], -1).T
    w, bias, used = problem.solve(w0.astype(np.float64), ridge)
    _set_input(model, node, 1, w.T.reshape(weight.shape).astype(weight.dtype), "weight_refit")
    _set_input(model, node, 2, bias.astype(weight.dtype), "bias_refit")
    return used


def _write_gemm(model, index, node, problem, ridge):
    weight = index.constant(node.input[1])
    trans_b = bool(node_attr(node, "transB", 0))
    alpha = float(node_attr(node, "alpha", 1.0))
    w0 = (weight.T if trans_b else weight) * alpha
    w, bias, used = problem.solve(w0.astype(np.float64), ridge)
    _set_input(model, node, 1, (w.T if trans_b else w).astype(weight.dtype), "weight_refit")
    _set_input(model, node, 2, bias.astype(weight.dtype), "bias_refit")
    set_attribute(node, "alpha", 1.0)
    set_attribute(node, "beta", 1.0)
    return used


def _write_matmul(model, index, node, problem, ridge):
    weight = index.constant(node.input[1])
    w, _, used = problem.solve(weight.astype(np.float64), ridge)
    _set_input(model, node, 1, w.astype(weight.dtype), "weight_refit")
    return used


WRITERS = {"Conv": _write_conv, "Gemm": _write_gemm, "MatMul": _write_matmul}


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
