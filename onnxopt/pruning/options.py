"""Options of the `prune` pass (typed, with a default and a doc each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxopt.infra.options import option


@dataclass(frozen=True)
class PruneOptions:
    ratio: float = option(
        0.3,
        "fraction of channels removed (per group, or overall with scope=global)",
        low=0.0,
        high=0.95,
    )
    target_macs: float | None = option(
        None, "keep at most this fraction of the MACs instead of using ratio", low=0.05, high=1.0
    )
    scope: Literal["layer", "global", "sensitivity"] = option(
        "layer",
        "layer: each group loses `ratio`; global: one ranking across groups; sensitivity: the "
        "same MACs as `layer`, taken where a measured probe per group says they cost least",
    )
    criterion: Literal["refit_error", "output", "activation", "l1", "l2", "bn_scale"] = option(
        "refit_error", "channel importance (refit_error, output, activation: from calibration data)"
    )
    reconstruct: bool = option(
        True,
        "refit downstream layers by least squares on calibration data against the unpruned model",
    )
    round_to: int = option(
        16,
        "keep a multiple of this many channels per group (ORT CPU convs block channels by 16)",
        low=1,
        high=4096,
    )
    min_channels: int = option(8, "never keep fewer channels than this in a group", low=1)
    exclude: tuple[str, ...] = option(
        (), "node names (fnmatch patterns) whose output channels are never pruned"
    )
    samples: int = option(256, "calibration samples used for importance and reconstruction", low=1)
    positions: int = option(
        64, "spatial positions sampled per image and layer for the refit", low=1
    )
    ridge: float | None = option(
        None,
        "refit pull toward the pruned weights (relative); none: chosen per layer on held-out "
        "samples",
        low=0.0,
    )
    held_out: int = option(
        64,
        "calibration samples after `samples` that choose each layer's ridge and whether it is "
        "refit at all (0: refit unchecked)",
        low=0,
    )
    max_move: float = option(
        1.0,
        "a refit changes a layer's weights by at most this fraction of their norm",
        low=0.0,
    )
    augment: bool = option(
        True,
        "refit also on calibration samples blended with each other (and mirrored, for images)",
    )
    min_cosine: float = option(
        0.9,
        "roll back unless the outputs' cosine to the input model stays >= this",
        low=-1.0,
        high=1.0,
    )
