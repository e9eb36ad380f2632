"""Build-step gates: the final model measured against the input, pass or fail.

A deployment build step fails when the optimized model falls below a bar: top-1 agreement or
cosine with the input (on --val or the holdout, as the run measured them), the measured
speed-up, or the size (a ratio of the input's size, or an absolute size). Each gate given is
evaluated into a `GateResult` (gate, required, measured, passed) for the summary and report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from onnxopt.errors import OptionError

SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class SizeLimit:
    """The largest acceptable output model: a ratio of the input's size or a byte count."""

    text: str
    """As the user wrote it: `0.5` (half the input) or `3MB`."""
    ratio: float | None = None
    max_bytes: int | None = None

    def allows(self, output_bytes: int, input_bytes: int) -> bool:
        if self.max_bytes is not None:
            return output_bytes <= self.max_bytes
        return output_bytes <= self.ratio * input_bytes


def parse_size_limit(text: str | float) -> SizeLimit:
    """`0.5` -> half the input's size; `3MB`, `512KiB`, `1000000B` -> bytes (KB/MB/GB are
    powers of 1000, KiB/MiB/GiB powers of 1024). A bare number is always a ratio."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or (unit and unit not in SIZE_UNITS):
        raise OptionError(
            f"--max-size: cannot read '{text}'; give a ratio of the input's size (e.g. 0.5) "
            "or a size with a unit (e.g. 3MB, 512KiB; units: B, KB, MB, GB, KiB, MiB, GiB)"
        )
    value = float(match.group(1))
    if value <= 0:
        raise OptionError(f"--max-size must be positive, got '{text}'")
    if unit:
        return SizeLimit(str(text).strip(), max_bytes=int(value * SIZE_UNITS[unit]))
    return SizeLimit(str(text).strip(), ratio=value)


@dataclass(frozen=True)
class BuildGates:
    """The bars the final model must meet against the input; None skips a gate."""

    min_top1: float | None = None
    """Lowest top-1 agreement (0..1) with the input on 2-D logits outputs."""
    min_cosine: float | None = None
    """Lowest cosine similarity with the input, worst output."""
    min_speedup: float | None = None
    """Lowest measured speed-up (input latency / output latency); needs the benchmark."""
    max_size: SizeLimit | None = None
    """Largest output size, as a ratio of the input's or absolute."""

    def __post_init__(self) -> None:
        for name in ("min_top1", "min_cosine"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise OptionError(f"--{name.replace('_', '-')} must be in [0, 1], got {value:g}")
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise OptionError(f"--min-speedup must be positive, got {self.min_speedup:g}")

    @property
    def needs_fidelity(self) -> bool:
        return self.min_top1 is not None or self.min_cosine is not None

    @property
    def needs_bench(self) -> bool:
        return self.min_speedup is not None


@dataclass(frozen=True)
class BuildFacts:
    """What the run measured on the final model against the input."""

    input_bytes: int
    output_bytes: int
    cosine: float | None = None
    """Worst output's cosine (None: no fidelity measured)."""
    top1: float | None = None
    """Worst top-1 agreement over 2-D logits outputs (None: none)."""
    fidelity_note: str = ""
    """Appended to fidelity values, e.g. ' (in-sample)'."""
    speedup: float | None = None


@dataclass(frozen=True)
class GateResult:
    gate: str
    required: str
    measured: str
    passed: bool


def evaluate_gates(gates: BuildGates, facts: BuildFacts) -> list[GateResult]:
    """One result per gate given, in a fixed order. NaN and unmeasured values never pass."""
    results = []
    if gates.min_top1 is not None:
        results.append(
            _at_least(
                "--min-top1",
                gates.min_top1,
                facts.top1,
                facts.fidelity_note,
                "no output is 2-D logits",
            )
        )
    if gates.min_cosine is not None:
        results.append(
            _at_least(
                "--min-cosine",
                gates.min_cosine,
                facts.cosine,
                facts.fidelity_note,
                "no fidelity measured",
            )
        )
    if gates.min_speedup is not None:
        results.append(
            _at_least("--min-speedup", gates.min_speedup, facts.speedup, "x", "not benchmarked")
        )
    if gates.max_size is not None:
        results.append(_size(gates.max_size, facts))
    return results


def _at_least(
    gate: str, required: float, measured: float | None, suffix: str, missing: str
) -> GateResult:
    if measured is None:
        return GateResult(gate, f">= {required:g}", f"not measured ({missing})", False)
    passed = not math.isnan(measured) and measured >= required
    return GateResult(gate, f">= {required:g}", f"{measured:.4f}{suffix}", passed)


def _size(limit: SizeLimit, facts: BuildFacts) -> GateResult:
    ratio = facts.output_bytes / facts.input_bytes if facts.input_bytes else math.inf
    measured = f"{facts.output_bytes} B ({ratio:.3f} of the input)"
    if limit.max_bytes is not None:
        required = f"<= {limit.text} ({limit.max_bytes} B)"
    else:
        required = f"<= {limit.ratio:g} of the input ({int(limit.ratio * facts.input_bytes)} B)"
    return GateResult(
        "--max-size", required, measured, limit.allows(facts.output_bytes, facts.input_bytes)
    )


def failure_line(failed: list[GateResult], written: bool) -> str:
    """One line naming every missed gate with what it required and what was measured."""
    missed = "; ".join(
        f"gate {r.gate} missed: required {r.required}, measured {r.measured}" for r in failed
    )
    tail = "model written anyway (--keep-failed)" if written else "no model written"
    return f"{missed} ({tail})"
