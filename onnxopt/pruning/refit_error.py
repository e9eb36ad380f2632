"""`refit_error` importance: the consumer-output error a channel's removal leaves after refitting.

Removing channels and then refitting each consumer by least squares (what reconstruction does)
loses only the part of the removed channels that the kept ones cannot linearly predict. For a
consumer with weights W (outputs x input features) and input covariance G, removing the
features F of one channel and re-solving the rest costs (Optimal Brain Surgeon, structured)

    cost(F) = tr( W[:, F] (P[F, F])^-1 W[:, F]^T ),   P = G^-1,

and the compensation updates W and P in closed form. Channels are removed greedily, cheapest
first, with the costs of all consumers of a group added up (each relative to that consumer's
output energy tr(W G W^T)). A channel's score is the group's cumulative relative error at the
moment it is removed: increasing in removal order, and comparable across groups.

Features per channel: k*k for a Conv consumer (its im2col columns), the Flatten block for a
Gemm after a Flatten, one otherwise. G comes from calibration data (`consumer_grams`).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, Consumer
from onnxopt.ir.graph import GraphIndex
from onnxopt.pruning.importance import weight_importance

DAMPING = 1e-2
"""Added to G's diagonal, relative to its mean diagonal, before inverting."""
KEEP_FRACTION = 0.04
"""The greedy stops with this fraction of a group left (ratio is at most 0.95)."""


class _ConsumerState:
    """P = (G + damping)^-1 and the compensated weights of one consumer, in feature space."""

    def __init__(
        self, gram: np.ndarray, weight: np.ndarray, features: dict[int, np.ndarray]
    ) -> None:
        d = gram.shape[0]
        damp = DAMPING * max(float(np.trace(gram)) / d, 1e-12)
        self.p = np.linalg.inv(gram + damp * np.eye(d))
        self.w = np.array(weight, dtype=np.float64)
        self.features = features  # group channel -> feature indices
        self.energy = max(float(np.sum((self.w @ gram) * self.w)), 1e-30)

    def costs(self, channels: np.ndarray) -> np.ndarray:
        idx = np.stack([self.features[c] for c in channels])  # (n, b)
        blocks = self.p[idx[:, :, None], idx[:, None, :]]  # (n, b, b)
        cols = np.transpose(self.w[:, idx], (1, 0, 2))  # (n, outputs, b)
        if idx.shape[1] == 1:
            return np.sum(cols[:, :, 0] ** 2, axis=1) / blocks[:, 0, 0] / self.energy
        solved = np.linalg.solve(blocks, np.transpose(cols, (0, 2, 1)))  # (n, b, outputs)
        return np.einsum("nob,nbo->n", cols, solved) / self.energy

    def remove(self, channel: int) -> None:
        f = self.features[channel]
        inv = np.linalg.inv(self.p[np.ix_(f, f)])
        self.w -= (self.w[:, f] @ inv) @ self.p[f, :]
        self.p -= self.p[:, f] @ inv @ self.p[f, :]


def refit_error_importance(
    model: onnx.ModelProto,
    groups: ChannelGroups,
    wanted: set[int],
    grams: dict[str, np.ndarray],
) -> dict[int, np.ndarray]:
    """Scores per group from `grams` (consumer name -> input feature covariance)."""
    index = GraphIndex(model.graph)
    scores, fallback = {}, set()
    for group in sorted(wanted):
        states = [
            state
            for consumer in groups.consumers
            if consumer.name in grams
            for state in [_state(model, index, groups, consumer, group, grams[consumer.name])]
            if state is not None
        ]
        if states:
            scores[group] = _greedy(states, groups.groups[group].size)
        else:
            fallback.add(group)
    if fallback:
        scores.update(weight_importance(model, groups, fallback, 1))
    return scores


def _state(model, index, groups: ChannelGroups, consumer: Consumer, group: int, gram: np.ndarray):
    layout = groups.layouts[consumer.input]
    node = model.graph.node[consumer.node]
    weight = index.constant(node.input[consumer.weight_index])
    if consumer.op_type == "Conv":
        matrix = weight.reshape(weight.shape[0], -1)
    elif consumer.op_type in ("Gemm", "MatMul"):
        matrix = weight if consumer.weight_axis == 1 else weight.T
    else:
        return None
    per_position = gram.shape[0] // layout.channels
    positions: dict[int, list[int]] = {}
    offset = 0
    for seg in layout.segments:
        if seg.group == group:
            for i in range(seg.size):
                positions.setdefault(seg.start + i, []).append(offset + i)
        offset += seg.size
    if not positions or matrix.shape[1] != gram.shape[0]:
        return None
    features = {
        c: np.concatenate([np.arange(p * per_position, (p + 1) * per_position) for p in ps])
        for c, ps in positions.items()
    }
    return _ConsumerState(gram, matrix, features)


def _greedy(states: list[_ConsumerState], size: int) -> np.ndarray:
    """Cumulative relative error at each channel's removal; unremoved ones score above all."""
    alive = np.array(sorted(set().union(*(s.features for s in states))))
    scores = np.zeros(size)
    total = 0.0
    stop = max(1, int(np.ceil(KEEP_FRACTION * size)))
    while len(alive) > stop:
        costs = sum(
            s.costs(alive) if set(alive) <= s.features.keys() else _partial(s, alive)
            for s in states
        )
        pick = int(np.argmin(costs))
        channel = int(alive[pick])
        total += max(float(costs[pick]), 0.0) + 1e-12 * (1.0 + total)
        scores[channel] = total
        for state in states:
            if channel in state.features:
                state.remove(channel)
        alive = np.delete(alive, pick)
    if len(alive):
        last = sum(
            s.costs(alive) if set(alive) <= s.features.keys() else _partial(s, alive)
            for s in states
        )
        scores[alive] = total + 1e-9 * (1.0 + total) + np.maximum(last, 0.0)
    return scores


def _partial(state: _ConsumerState, alive: np.ndarray) -> np.ndarray:
    """Costs of `alive` channels for a consumer that reads only some of them (others cost 0)."""
    out = np.zeros(len(alive))
    present = np.array([c in state.features for c in alive])
    if present.any():
        out[present] = state.costs(alive[present])
    return out
