"""Accuracy-aware fallback: keep the fewest quantized nodes in float so that the model meets a
fidelity target (output cosine or top-1 agreement with the float model) on calibration data.

The unit of fallback is a quantized tensor: dropping its Q/DQ pair means that the node producing
it and the int8 nodes reading it run in float (a lone float node would still read and write
quantized tensors, so it would remove only its weight rounding). Sensitivity of a unit = how
much the output cosine improves when only that unit is float (on a subset of the data). Units
are ranked by it, and the smallest prefix of the ranking that meets the target on the
calibration data is found by doubling, then bisection. A model of more than `MAX_PROBES` units
(a detector has hundreds: each probe builds and runs the model) is probed in runs of units
adjacent in graph order, each run one unit (`probe_groups`), then searched again among the
units inside the runs that search kept float (`search_coarse_to_fine`): a bounded cost. The
pass never sees the data the manager's gate measures on, so the gate says whether the target
holds on new inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from onnxopt.runtime.fidelity import ReferenceScorer, Score

log = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 128
MAX_PROBES = 32


@dataclass
class FallbackResult:
    kept_float: list[tuple[str, float]] = field(default_factory=list)  # (unit, cosine gain)
    nodes: frozenset[str] = frozenset()  # the nodes those units keep float
    score: Score | None = None
    met: bool = False
    evaluations: int = 0


def tensor_units(
    graph: onnx.GraphProto, quantized: list[str], tensors: list[str]
) -> dict[str, frozenset[str]]:
    """Quantized tensor -> the quantized nodes that produce or read it (units with the same nodes
    are merged under the first tensor's name)."""
    active = set(quantized)
    producers = {o: n for n in graph.node for o in n.output}
    readers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.name)
    units: dict[str, frozenset[str]] = {}
    seen: set[frozenset[str]] = set()
    for tensor in tensors:
        nodes = {n for n in readers.get(tensor, ()) if n in active}
        producer = producers.get(tensor)
        while (
            producer is not None
            and producer.name not in active
            and producer.op_type in ("Relu", "Clip")
        ):
            producer = producers.get(producer.input[0])
        if producer is not None and producer.name in active:
            nodes.add(producer.name)
        unit = frozenset(nodes)
        if unit and unit not in seen:
            seen.add(unit)
            units[tensor] = unit
    return units


def probe_groups(
    graph: onnx.GraphProto, units: dict[str, frozenset[str]], limit: int = MAX_PROBES
) -> dict[str, frozenset[str]]:
    """`units` if at most `limit`, else at most `limit` runs of units adjacent in graph order
    (by their first node), each under its first unit's name."""
    if len(units) <= limit:
        return units
    position = {node.name: i for i, node in enumerate(graph.node)}
    ordered = sorted(units, key=lambda t: (min(position.get(n, 0) for n in units[t]), t))
    size = -(-len(ordered) // limit)
    return {
        ordered[i]: frozenset().union(*(units[t] for t in ordered[i : i + size]))
        for i in range(0, len(ordered), size)
    }


def search_coarse_to_fine(
    graph: onnx.GraphProto,
    units: dict[str, frozenset[str]],
    search: Callable[[dict[str, frozenset[str]]], FallbackResult],
    limit: int = MAX_PROBES,
) -> tuple[FallbackResult, dict[str, frozenset[str]]]:
    """`search` over the probe groups of `units`; when it kept groups float, `search` again
    over the units inside them, kept if it meets the targets with fewer float nodes. Returns
    the result and the units its names refer to."""
    groups = probe_groups(graph, units, limit)
    result = search(groups)
    if groups is units or not result.met or not result.nodes:
        return result, groups
    inner = {name: nodes for name, nodes in units.items() if nodes <= result.nodes}
    finer = probe_groups(graph, inner, limit)
    fine = search(finer)
    fine.evaluations += result.evaluations
    if fine.met and len(fine.nodes) < len(result.nodes):
        return fine, finer
    result.evaluations = fine.evaluations
    return result, groups


def search_fallback(
    units: dict[str, frozenset[str]],
    build: Callable[[frozenset[str]], onnx.ModelProto],
    ranking: ReferenceScorer,
    judge: ReferenceScorer,
    target_cosine: float | None,
    target_top1: float | None,
) -> FallbackResult:
    """Keep the fewest `units` (name -> nodes) float so `judge` meets the targets."""
    result = FallbackResult()
    full = judge.score(build(frozenset()))
    result.score, result.evaluations = full, 1
    if full.meets(target_cosine, target_top1):
        result.met = True
        return result
    base = ranking.score(build(frozenset())).cosine
    gains = []
    for name, nodes in units.items():
        gains.append((ranking.score(build(nodes)).cosine - base, name))
        result.evaluations += 1
    order = [name for _, name in sorted(gains, key=lambda g: (-g[0], g[1]))]
    gain_of = {name: gain for gain, name in gains}

    def nodes_of(count: int) -> frozenset[str]:
        return frozenset().union(*(units[name] for name in order[:count]))

    def check(count: int) -> Score:
        result.evaluations += 1
        return judge.score(build(nodes_of(count)))

    low, high, count, best = 0, None, 1, None
    while count < len(order):
        score = check(count)
        if score.meets(target_cosine, target_top1):
            high, best = count, score
            break
        low, count = count, count * 2
    if high is None:
        high, best = len(order), check(len(order))
    while high - low > 1:
        middle = (low + high) // 2
        score = check(middle)
        if score.meets(target_cosine, target_top1):
            high, best = middle, score
        else:
            low = middle
    result.kept_float = [(name, round(gain_of[name], 6)) for name in order[:high]]
    result.nodes = nodes_of(high)
    result.score = best
    result.met = best.meets(target_cosine, target_top1)
    return result
