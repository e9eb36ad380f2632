"""What a pipeline run reports: one record per pass, the run's totals, the model metadata."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

ACCEPTED = ("changed", "unchanged")
SCALARS = (bool, int, float, str, type(None))


@dataclass
class PassRecord:
    name: str
    step: str
    required_by: str = ""
    """The pass that asked for this one to run right before it (empty: a pipeline step)."""
    status: str = "unchanged"  # changed | unchanged | rolled back
    reason: str = ""
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    expected: str = ""
    fidelity: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        """The deterministic part (no timings) written into the model's metadata: scalar stats
        only, since per-tensor tables (`share` lists every weight) would add kilobytes to a
        file whose size may be the point; the JSON report keeps them."""
        summary = {
            "pass": self.step,
            "status": self.status,
            "reason": self.reason,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, SCALARS)},
            "skipped": len(self.skipped),
        }
        if self.required_by:
            summary["required_by"] = self.required_by
        return summary


@dataclass
class RunReport:
    version: str
    pipeline: str
    provider: str
    seed: int
    input: str = ""
    output: str = ""
    calibration: str | None = None
    validation: str = ""
    fidelity_on: str = ""
    """What every fidelity number of the run was measured on, in words."""
    fidelity_in_sample: bool = False
    """True when that data is data the passes fitted on (too little to hold any out)."""
    checker_level: str = "full"
    passes: list[PassRecord] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    fidelity: dict[str, Any] | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    """Output over input: `size` (bytes), `macs`, and under --bench `latency` (median of the
    interleaved per-round ratios) and `speedup` (its inverse)."""
    bench: dict[str, Any] | None = None
    """--bench: the input and the output timed interleaved (latency, runs, provider)."""
    gates: list[dict[str, Any]] = field(default_factory=list)
    """Build-step gates given: gate, required, measured, passed."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


METADATA_KEYS = ("onnxopt.version", "onnxopt.pipeline", "onnxopt.passes")


def write_metadata(model: onnx.ModelProto, report: RunReport) -> None:
    """Record how the model was made; replaces any earlier onnxopt entries."""
    kept = [p for p in model.metadata_props if p.key not in METADATA_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    summaries = json.dumps([p.summary() for p in report.passes], sort_keys=True)
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in kept},
            "onnxopt.version": report.version,
            "onnxopt.pipeline": report.pipeline,
            "onnxopt.passes": summaries,
        },
    )
