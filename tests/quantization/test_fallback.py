"""`quantization/fallback.py` and its use by `quant`: probe groups on large models, and the
search that runs with no target set when the int8 model would miss the rollback gate."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnxopt.quantization.fallback import FallbackResult, probe_groups, search_coarse_to_fine
from tests.conftest import float_model
from tests.quantization.test_quant import _random, quantize


def test_probe_groups_join_units_adjacent_in_graph_order():
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(10)]
    graph = helper.make_graph(nodes, "g", [], [])
    units = {f"z{9 - i}": frozenset({f"n{i}"}) for i in range(10)}  # names against graph order
    assert probe_groups(graph, units, limit=10) is units
    groups = probe_groups(graph, units, limit=4)
    assert list(groups.values()) == [
        frozenset({"n0", "n1", "n2"}),
        frozenset({"n3", "n4", "n5"}),
        frozenset({"n6", "n7", "n8"}),
        frozenset({"n9"}),
    ]
    assert list(groups) == ["z9", "z6", "z3", "z0"]  # each under its first unit's name


def test_coarse_to_fine_searches_again_inside_the_groups_kept_float():
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(8)]
    graph = helper.make_graph(nodes, "g", [], [])
    units = {f"u{i}": frozenset({f"n{i}"}) for i in range(8)}
    searched = []

    def search(candidates):  # fake: the target needs n5 float, and nothing else
        searched.append(sorted(candidates))
        kept = [name for name, nodes in candidates.items() if "n5" in nodes]
        return FallbackResult(
            kept_float=[(kept[0], 0.5)], nodes=candidates[kept[0]], met=True, evaluations=3
        )

    result, named = search_coarse_to_fine(graph, units, search, limit=4)
    assert searched == [["u0", "u2", "u4", "u6"], ["u4", "u5"]]  # pairs, then inside u4's pair
    assert result.nodes == {"n5"} and named["u5"] == {"n5"} and result.evaluations == 6


def _two_convs():
    rng = np.random.default_rng(11)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1] * 4, name="c1"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1] * 4, name="c2"),
    ]
    return float_model(nodes, [("x", [1, 3, 8, 8])], [("y", None)], inits)


@pytest.mark.parametrize(
    ("options", "searched"),
    [
        ({}, False),  # int8 meets min_cosine 0.9 + 0.03: one score, nothing float
        ({"min_cosine": 0.99999, "auto_fallback": 0.0}, True),  # the gate would roll it back
    ],
)
def test_fallback_runs_without_a_target_when_the_gate_would_roll_back(options, searched):
    model = _two_convs()
    opts = {"rounding": "nearest", "equalize": False, "prepare": False, **options}
    result = quantize(model, _random(model), **opts)
    fallback = result.stats["fallback"]
    assert fallback["targets"]["cosine"] == pytest.approx(
        options.get("min_cosine", 0.9) + options.get("auto_fallback", 0.03)
    )
    assert fallback["target_met"]
    assert (fallback["evaluations"] > 1) == searched
    assert (len(fallback["kept_float"]) > 0) == searched


def test_no_fallback_search_when_auto_fallback_is_off():
    model = _two_convs()
    result = quantize(model, _random(model), auto_fallback=None, prepare=False)
    assert "fallback" not in result.stats
