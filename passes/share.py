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

import onnx

from onnxopt.errors import OptionError, PassRefused
from onnxopt.infra.pass_base import (
    EXACT,
    Fidelity,
    Pass,
    PassContext,
    PassResult,
    upgrade_steps,
)
from onnxopt.ir.codebook import MIN_OPSET
from onnxopt.ir.graph import default_opset
from onnxopt.sharing.options import ShareOptions
from onnxopt.sharing.run import ShareRun

__all__ = ["ShareOptions", "SharePass"]


class SharePass(Pass[ShareOptions]):
    name = "share"
    summary = "weight sharing: exact dedup, k-means codebooks decoded in-graph (data-aware)"
    Options = ShareOptions
    preserves = frozenset()  # merges and re-encodes constants: new tensors, new readers

    def __init__(self, options: ShareOptions | None = None) -> None:
        super().__init__(options)
        if self.options.bits is not None and self.options.target_ratio is not None:
            raise OptionError("pass 'share': give bits or target_ratio, not both")

    def fidelity(self) -> Fidelity:
        return Fidelity(min_cosine=self.options.min_cosine) if self.options.codebooks else EXACT

    def prerequisites(self, model: onnx.ModelProto) -> tuple[str, ...]:
        """Codebooks decode with BitShift and GatherElements: an older model is upgraded to
        opset 11 first (see `Pass.prerequisites`)."""
        return upgrade_steps(model, MIN_OPSET) if self.options.codebooks else ()

    def check_opset(self, model: onnx.ModelProto, opset: int | None = None) -> None:
        super().check_opset(model, opset)
        opset = default_opset(model) if opset is None else opset
        if self.options.codebooks and opset < MIN_OPSET:
            raise PassRefused(
                f"pass 'share' codebooks need opset >= {MIN_OPSET} (BitShift, GatherElements), "
                f"the model has opset {opset}: convert it first or use plain 'share'"
            )

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        run = ShareRun(self.options, ctx.provider, ctx.calibration)
        shared = run.share(model)
        if shared is None:
            return PassResult(model, False, run.stats, run.skipped)
        return PassResult(shared, True, run.stats, run.skipped)
