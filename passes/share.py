"""`share`: weight sharing — exact deduplication and data-aware k-means codebooks.

Always: identical constants (initializers and Constant nodes, same dtype, shape and bytes) are
stored once, and a 2-D constant that is the transpose of another becomes a Transpose of it
(tied embeddings). Lossless.

With `bits` (every weight gets 2**bits shared values) or `target_ratio` (the file this many
times smaller; bits and codebook granularity chosen per weight by a greedy allocation on each
layer's measured error per byte), each weight becomes a codebook plus packed indices, decoded in
the graph by standard ops (BitShift, Cast, GatherElements) that ONNX Runtime folds at session
load: inference speed and memory are those of the unshared model, the file is smaller.
Codebooks are per tensor, or per output channel where that pays for its extra centroids. With
calibration data (the default when given) each codebook minimizes its layer's output error on
real inputs: k-means weighted by the input second moments, GPTQ-style assignment with error
feedback and a least-squares refit of the centroids.

Refuses: codebooks on opset < 11 (the decoder needs BitShift and GatherElements). Leaves alone,
with the reason in the report: tensors below `min_elements`, tensors read as anything but a
weight (shapes, scales, Resize factors), graph outputs, tensors read inside subgraphs, and
weights whose codebook form would not be smaller.

    onnxopt optimize model.onnx --passes share -o deduplicated.onnx
    onnxopt optimize model.onnx --passes "share{target_ratio=6}" --calib data.npz -o small.onnx
    onnxopt optimize model.onnx --passes prune,share{bits=4},quant --calib data.npz -o tiny.onnx
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from typing import Literal

import onnx

from onnxopt.errors import OptionError, PassRefused
from onnxopt.infra.options import option
from onnxopt.infra.pass_base import EXACT, Fidelity, Pass, PassContext, PassResult
from onnxopt.ir.codebook import MIN_OPSET
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import default_opset
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.sharing.dedup import deduplicate
from onnxopt.sharing.run import ShareRun, ShareSettings, replace_with_decoders, tensor_report

log = logging.getLogger(__name__)

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


class SharePass(Pass):
    name = "share"
    summary = "weight sharing: exact dedup, k-means codebooks decoded in-graph (data-aware)"
    Options = ShareOptions

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.bits is not None and self.options.target_ratio is not None:
            raise OptionError("pass 'share': give bits or target_ratio, not both")

    @property
    def codebooks(self) -> bool:
        return self.options.bits is not None or self.options.target_ratio is not None

    def fidelity(self) -> Fidelity:
        return Fidelity(min_cosine=self.options.min_cosine) if self.codebooks else EXACT

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        super().check_applicable(model, ctx)
        if self.codebooks and default_opset(model) < MIN_OPSET:
            raise PassRefused(
                f"pass 'share' codebooks need opset >= {MIN_OPSET} (BitShift, GatherElements), "
                f"the model has opset {default_opset(model)}: convert it first or use plain 'share'"
            )

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        stats: dict = {"bytes_before": stored_bytes(model), **_gzip_size(model, "before")}
        skipped: list[str] = []
        changed = False
        if self.options.dedup:
            merged = deduplicate(model.graph)
            stats["deduplicated"] = len(merged.merged)
            stats["transposed_copies"] = len(merged.transposed)
            stats["dedup_bytes_saved"] = merged.bytes_saved
            changed = bool(merged.merged or merged.transposed)
        if self.codebooks:
            run = ShareRun(self._settings(ctx.provider), ctx.calibration)
            encoded = run.encode(model)
            replace_with_decoders(model, encoded)
            skipped.extend(run.skipped)
            stats.update(run.stats)
            stats["tensors"] = [tensor_report(item) for item in encoded]
            changed = changed or bool(encoded)
        if not changed:
            return PassResult(model, False, stats, skipped)
        remove_dead_code(model)
        stats["bytes_after"] = stored_bytes(model)
        stats.update(_gzip_size(model, "after"))
        return PassResult(model, True, stats, skipped)

    def _settings(self, provider: str) -> ShareSettings:
        o = self.options
        return ShareSettings(
            o.bits,
            o.target_ratio,
            o.granularity,
            o.data_aware,
            o.min_elements or (MIN_ELEMENTS if o.target_ratio is None else MIN_ELEMENTS_BUDGET),
            o.exclude,
            o.iterations,
            provider,
        )


def _gzip_size(model: onnx.ModelProto, when: str) -> dict:
    """gzip size of the model (what a download costs); skipped for models over 2 GB."""
    if stored_bytes(model) >= PROTOBUF_SAFE_BYTES:
        return {}
    return {f"gzip_bytes_{when}": len(gzip.compress(model.SerializeToString(), 6, mtime=0))}
