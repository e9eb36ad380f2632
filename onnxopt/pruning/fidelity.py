"""Compact fidelity numbers of a candidate against a fixed reference, for pass statistics."""

from __future__ import annotations

import onnx

from onnxopt.data.sources import DataSource
from onnxopt.runtime.fidelity import compare_sessions
from onnxopt.runtime.session import make_session


class FidelityProbe:
    """Compares models with `reference` on `data`: worst output cosine, top-1 agreement."""

    def __init__(self, reference: onnx.ModelProto, data: DataSource, provider: str) -> None:
        self.session = make_session(reference, provider)
        self.data = data
        self.provider = provider
        self.description = data.description

    def measure(self, candidate: onnx.ModelProto) -> dict[str, float | None]:
        report = compare_sessions(self.session, make_session(candidate, self.provider), self.data)
        top1 = report.worst("top1")
        return {
            "cosine": round(float(report.worst("cosine")), 6),
            "top1_agreement": None if top1 is None else round(float(top1), 6),
        }
