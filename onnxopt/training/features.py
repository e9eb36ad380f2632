"""The feature term's tensors: intermediate tensors both graphs compute under one name, each
student channel paired with the teacher channel it tracks and the factor between them.

The student's tensors are not the teacher's, channel for channel, even under the same name:
`quant` equalizes ranges across layers (a channel scaled by up to hundreds between one layer
and the next, undone by the weights after it) and `prune` keeps a subset of a tensor's
channels. A loss on the raw tensors would train the student to undo the equalization its
quantization ranges were set for, and cannot compare a pruned tensor at all. So the pairing is
measured once, before training, on one batch: with as many channels as the teacher, channel c
tracks channel c; with fewer, each tracks the teacher channel it correlates with best (no two
the same). The factor is the least-squares a in teacher ≈ a · student. Channels that track
their partner poorly (correlation under `MIN_CORRELATION`, or constant) are left out of the
term; a tensor keeping under half of its channels is left out altogether.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch

from onnxopt.ir.shapes import infer_shapes

MIN_CORRELATION = 0.5
MIN_MATCHED_SHARE = 0.5
MAX_POSITIONS = 16384
SKIPPED_PRODUCERS = ("QuantizeLinear", "DequantizeLinear", "Constant")


@dataclass(frozen=True)
class FeatureMatch:
    """Student channels `student_channels` of tensor `name` track teacher channels
    `teacher_channels`, with teacher ≈ `factors` · student for each pair."""

    name: str
    student_channels: np.ndarray
    teacher_channels: np.ndarray
    factors: np.ndarray
    all_channels: bool

    def target(self, teacher_value: np.ndarray) -> np.ndarray:
        """The teacher's tensor in the student's channels and units."""
        picked = np.take(teacher_value, self.teacher_channels, axis=1)
        shape = [1, -1] + [1] * (picked.ndim - 2)
        return picked / self.factors.reshape(shape).astype(picked.dtype)

    def student(self, value: torch.Tensor) -> torch.Tensor:
        if self.all_channels:
            return value
        index = torch.as_tensor(self.student_channels, device=value.device)
        return value.index_select(1, index)


def candidate_features(student: onnx.ModelProto, teacher: onnx.ModelProto,
                       s_info=None, t_info=None) -> list[str]:
    """Float tensors of rank >= 2 that both graphs compute under one name, where the student's
    shape is the teacher's but for as many or fewer channels (axis 1), in the student's
    order; graph outputs excluded (the output term has them). `s_info`, `t_info`: the graphs'
    inferred shapes, when the caller has them."""
    produced = {o for n in teacher.graph.node for o in n.output}
    outputs = {o.name for o in student.graph.output} | {o.name for o in teacher.graph.output}
    s_info = infer_shapes(student) if s_info is None else s_info
    t_info = infer_shapes(teacher) if t_info is None else t_info
    names = []
    for node in student.graph.node:
        if node.op_type in SKIPPED_PRODUCERS:
            continue
        names.extend(name for name in node.output if name in produced and name not in outputs
                     and _comparable(name, s_info, t_info))
    return names


def narrowed(student: onnx.ModelProto, teacher: onnx.ModelProto,
             s_info=None, t_info=None) -> list[str]:
    """The tensors both graphs compute under one name where the student has fewer channels
    (axis 1) than the teacher: what `prune` thinned. `s_info`, `t_info` as in
    `candidate_features`."""
    s_info = infer_shapes(student) if s_info is None else s_info
    t_info = infer_shapes(teacher) if t_info is None else t_info
    return [name for name in candidate_features(student, teacher, s_info, t_info)
            if s_info.shape(name)[1] < t_info.shape(name)[1]]


def _comparable(name: str, s_info, t_info) -> bool:
    s_shape, t_shape = s_info.shape(name), t_info.shape(name)
    if s_shape is None or t_shape is None or len(s_shape) < 2 or len(s_shape) != len(t_shape):
        return False
    float_type = onnx.TensorProto.FLOAT
    if not s_info.dtypes.get(name) == float_type == t_info.dtypes.get(name):
        return False
    same_rest = all(a == b for i, (a, b) in enumerate(zip(s_shape, t_shape, strict=True)) if i != 1)
    channels = s_shape[1], t_shape[1]
    return same_rest and all(isinstance(c, int) for c in channels) and channels[0] <= channels[1]


def match_feature(name: str, student_value: np.ndarray, teacher_value: np.ndarray,
                  seed: int = 0) -> FeatureMatch | None:
    """The pairing of `name`'s channels measured on one batch (see the module docstring);
    None when under half the student's channels track a teacher channel."""
    s, t = _positions(student_value, seed), _positions(teacher_value, seed)
    s_centred, t_centred = s - s.mean(0), t - t.mean(0)
    s_norm = np.linalg.norm(s_centred, axis=0)
    t_norm = np.linalg.norm(t_centred, axis=0)
    if s.shape[1] == t.shape[1]:
        partner = np.arange(s.shape[1])
        correlation = (s_centred * t_centred).sum(0) / np.maximum(s_norm * t_norm, 1e-30)
    else:
        matrix = (s_centred.T @ t_centred) / np.maximum(np.outer(s_norm, t_norm), 1e-30)
        partner, correlation = _distinct_partners(matrix)
    live = (s_norm > 0) & (t_norm[partner] > 0)
    kept = np.flatnonzero(live & (correlation >= MIN_CORRELATION))
    if len(kept) < MIN_MATCHED_SHARE * s.shape[1]:
        return None
    s_kept, t_kept = s[:, kept], t[:, partner[kept]]
    factors = (s_kept * t_kept).sum(0) / np.maximum((s_kept * s_kept).sum(0), 1e-30)
    good = factors > 0
    kept, factors = kept[good], factors[good]
    if len(kept) < MIN_MATCHED_SHARE * s.shape[1]:
        return None
    return FeatureMatch(name, kept, partner[kept], factors.astype(np.float32),
                        all_channels=len(kept) == s.shape[1])


def _positions(value: np.ndarray, seed: int) -> np.ndarray:
    """`value` as rows of channel vectors (axis 1 last), at most MAX_POSITIONS rows."""
    rows = np.moveaxis(value, 1, -1).reshape(-1, value.shape[1]).astype(np.float64)
    if len(rows) > MAX_POSITIONS:
        pick = np.random.default_rng([seed, len(rows)]).choice(len(rows), MAX_POSITIONS,
                                                               replace=False)
        rows = rows[np.sort(pick)]
    return rows


def _distinct_partners(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row, a column with the highest correlation that no better-matching row took;
    (partner, its correlation)."""
    partner = np.zeros(matrix.shape[0], dtype=np.int64)
    correlation = np.full(matrix.shape[0], -np.inf)
    taken: set[int] = set()
    for row in np.argsort(-matrix.max(axis=1)):
        for column in np.argsort(-matrix[row]):
            if int(column) not in taken:
                taken.add(int(column))
                partner[row], correlation[row] = column, matrix[row, column]
                break
    return partner, correlation


def spread(matches: list[FeatureMatch], count: int) -> list[FeatureMatch]:
    """Up to `count` of `matches` spread evenly over their order, ending with the last (the
    features before the head)."""
    if count == 0 or len(matches) <= count:
        return matches[:count] if count == 0 else matches
    picks = np.linspace(0, len(matches) - 1, count).round().astype(int)
    return [matches[i] for i in sorted(set(picks.tolist()))]
