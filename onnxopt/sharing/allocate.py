"""Bits per weight under a size budget: the fewest bytes for the least predicted damage.

Each weight has candidate encodings (bits x per-tensor/per-channel book, or kept as it is),
each with a size and an error: the layer's relative output error when its input moments are
known, else the relative weight error. Errors add up across layers, scaled by each layer's
sensitivity. Starting from every weight's smallest encoding, the upgrade with the largest error
reduction per extra byte is taken while it fits the budget (a greedy walk of the lower convex
hull, as in HAQ/HAWQ-style mixed precision). Sensitive layers (depthwise, first and last) end up
with more bits because their errors are larger, not because of a rule.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    bits: int | None  # None: the weight is kept as it is
    axis: int | None
    scaled: bool
    nbytes: int
    error: float


def allocate(
    options: dict[str, list[Candidate]], sensitivity: dict[str, float], budget: int
) -> tuple[dict[str, Candidate], bool]:
    """One candidate per weight; whether the total fits `budget` bytes."""
    choice = {name: min(c, key=lambda x: (x.nbytes, x.error)) for name, c in options.items()}
    total = sum(c.nbytes for c in choice.values())
    while True:
        best, best_gain = None, 0.0
        for name, current in choice.items():
            weight = sensitivity.get(name, 1.0)
            for candidate in options[name]:
                extra = candidate.nbytes - current.nbytes
                if extra <= 0 or candidate.error >= current.error or total + extra > budget:
                    continue
                gain = weight * (current.error - candidate.error) / extra
                if gain > best_gain:
                    best, best_gain = (name, candidate), gain
        if best is None:
            break
        name, candidate = best
        total += candidate.nbytes - choice[name].nbytes
        choice[name] = candidate
    return choice, total <= budget
