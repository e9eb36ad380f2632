"""Options of the `share` pass (typed, with a default and a doc each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxopt.infra.options import option

MIN_ELEMENTS = 4096
MIN_ELEMENTS_BUDGET = 1024


@dataclass(frozen=True)
class ShareOptions:
    bits: int | None = option(
        None, "codebook of 2**bits values for every weight (2-8)", low=2, high=8
    )
    target_ratio: float | None = option(
        None, "make the file this many times smaller; bits chosen per weight", low=1.0
    )
    granularity: Literal["auto", "tensor", "channel", "scaled"] = option(
        "auto",
        "one codebook per tensor, per output channel, one of channel-normalized values times "
        "a scale per channel (scaled), or whichever pays (auto)",
    )
    data_aware: bool = option(
        True, "fit codebooks to each layer's output on the calibration data, when given"
    )
    dedup: bool = option(True, "store identical (or transposed) constants once")
    min_elements: int | None = option(
        None,
        "tensors smaller than this stay as they are (default 4096 with `bits`; 1024 with "
        "`target_ratio`, whose allocation keeps a small tensor as it is unless a codebook pays)",
        low=1,
    )
    exclude: tuple[str, ...] = option((), "weights, reader node names (globs) or op types to skip")
    iterations: int = option(30, "k-means iterations", low=1, high=1000)
    min_cosine: float = option(
        0.9,
        "roll back when the output cosine on --val (else the holdout) falls below this",
        low=0.0,
        high=1.0,
    )

    @property
    def codebooks(self) -> bool:
        """Whether weights become codebooks (`bits` or `target_ratio` given)."""
        return self.bits is not None or self.target_ratio is not None

    @property
    def smallest(self) -> int:
        """`min_elements`, or its default for `bits` or `target_ratio`."""
        if self.min_elements is not None:
            return self.min_elements
        return MIN_ELEMENTS if self.target_ratio is None else MIN_ELEMENTS_BUDGET
