"""Lazily computed, cached read-only facts about the current model.

An analysis is a function of the model registered under a name. The cache holds each result
until a pass changes the model; the pass manager then drops every result the pass does not
declare it preserves (`Pass.preserves`). The analyses passes share are named here: `SHAPES`
(`shapes_of`) and `CHANNEL_GROUPS` (`channel_groups_of`, computed from the cached shapes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, analyze_channel_groups
from onnxopt.ir.shapes import ShapeInfo, infer_shapes

AnalysisFn = Callable[[onnx.ModelProto], Any]


class AnalysisCache:
    def __init__(self) -> None:
        self._results: dict[str, Any] = {}
        self.computed: dict[str, int] = {}

    def get(self, name: str, compute: AnalysisFn, model: onnx.ModelProto) -> Any:
        """The cached result of `compute(model)` for the current model, computed on first use."""
        if name not in self._results:
            self._results[name] = compute(model)
            self.computed[name] = self.computed.get(name, 0) + 1
        return self._results[name]

    def invalidate(self, preserved: frozenset[str] = frozenset()) -> None:
        self._results = {k: v for k, v in self._results.items() if k in preserved}

    def snapshot(self) -> dict[str, Any]:
        return dict(self._results)

    def restore(self, snapshot: dict[str, Any]) -> None:
        self._results = dict(snapshot)


SHAPES = "shapes"
CHANNEL_GROUPS = "channel_groups"


def shapes_of(cache: AnalysisCache, model: onnx.ModelProto) -> ShapeInfo:
    """Inferred shapes and element types of the current model (cached)."""
    return cache.get(SHAPES, infer_shapes, model)


def channel_groups_of(cache: AnalysisCache, model: onnx.ModelProto) -> ChannelGroups:
    """Channel dependency groups of the current model (cached; from the cached shapes)."""

    def compute(current: onnx.ModelProto) -> ChannelGroups:
        return analyze_channel_groups(current, shapes_of(cache, current))

    return cache.get(CHANNEL_GROUPS, compute, model)
