"""`quant`: static int8 quantization in QDQ form that ONNX Runtime fuses into int8 kernels.

Steps: prepare (node names; with `prepare`, the pass manager runs `cleanup` right before this
pass for BatchNorm and constant folding, see `QuantPass.prerequisites`), plan (which nodes run in
int8, see `onnxopt.quantization.plan`), calibrate (streaming min/max or histograms of the
planned tensors on the calibration data), fidelity techniques (channel equalization before
calibration; GPTQ weight rounding, and optionally bias correction, after), QDQ rewrite, then
the accuracy-aware fallback that keeps the most sensitive layers in float until
`target_cosine`/`target_top1` is met on the calibration data (the manager then measures the
result on data no pass saw: --val, or its holdout of the calibration samples). With no target
set, the fallback still runs when the int8 model's worst output cosine on the calibration data
is below `min_cosine` + `auto_fallback`: a model the gate would roll back keeps a few layers
float instead.

Activations (`activations`): `static` calibrates one range per tensor and writes QDQ; `dynamic`
quantizes the input of each MatMul/Gemm with a constant weight per run (DynamicQuantizeLinear ->
MatMulInteger, which ORT fuses into DynamicQuantizeMatMul; see `onnxopt.quantization.dynamic`);
`auto` (the default) takes dynamic for transformer-like graphs (MatMul-dominated, with
LayerNormalization or Softmax), whose outlier activations one calibrated range serves badly, and
static otherwise; the stats say which and why. Static activations: affine 8-bit (uint8 on CPU: U8S8
kernels are the fast ones; int8 on CUDA); weights: symmetric int8, per output channel; biases: int32
with scale x_scale * w_scale. Relu/Clip after an int8 op are absorbed by its Q. On CPU an image stem
(a Conv on a 3-channel image input) stays float, and so does a few-channel depthwise conv after it:
ORT's float kernels are faster there (see `onnxopt.quantization.stem`). Weights stored as codebooks
by `share` stay codebooks, of int8 codes (see `onnxopt.quantization.shared`). Declines (model
unchanged, reason in the report) a model that is already quantized or has nothing to quantize.

    onnxopt optimize model.onnx --passes quant --calib data.npz -o model_int8.onnx
    onnxopt optimize model.onnx --passes "quant{target_top1=0.95}" --calib c.npz
"""

from __future__ import annotations

import logging

import onnx

from onnxopt.errors import PassRefused
from onnxopt.infra.pass_base import Fidelity, Pass, PassContext, PassResult
from onnxopt.ir.graph import default_opset
from onnxopt.ir.qdq import ensure_node_names
from onnxopt.quantization.options import QuantOptions
from onnxopt.quantization.rules import QUANTIZED_OP_TYPES
from onnxopt.quantization.run import QuantRun
from onnxopt.quantization.shared import materialize, restore, weight_peaks, weights_read

__all__ = ["QuantOptions", "QuantPass"]

log = logging.getLogger(__name__)


class QuantPass(Pass[QuantOptions]):
    name = "quant"
    summary = (
        "int8 quantization that ORT fuses into int8 kernels: static QDQ (calibrated), or "
        "dynamic activations for transformers"
    )
    Options = QuantOptions
    preserves = frozenset()  # inserts Q/DQ nodes: every tensor set changes
    min_opset = 10

    def requires_calibration(self) -> bool:
        return True

    def fidelity(self) -> Fidelity:
        targets = [
            t for t in (self.options.target_cosine, self.options.min_cosine) if t is not None
        ]
        return Fidelity(min_cosine=min(targets))

    def prerequisites(self, model: onnx.ModelProto) -> tuple[str, ...]:
        """The opset upgrade a model below opset 10 needs (see `Pass.prerequisites`), then
        `cleanup` (BatchNorm and constant folding) when `prepare` is on, unless the model is
        already quantized (declined)."""
        if quantized_ops(model):
            return ()
        upgrade = super().prerequisites(model)
        return (*upgrade, "cleanup") if self.options.prepare else upgrade

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        super().check_applicable(model, ctx)
        if ctx.provider not in ("cpu", "cuda"):
            raise PassRefused(f"pass 'quant' has no int8 layout for provider '{ctx.provider}'")

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        reason = decline_reason(model)
        if reason is not None:
            return PassResult(model, False, {}, [reason])
        data = ctx.require_calibration(self.name)
        run = QuantRun(self.options, ctx.provider, data)
        ensure_node_names(model.graph)
        model, shared = materialize(model)
        read = weights_read(model, shared)
        run.frozen = frozenset(read)
        run.weight_peaks = weight_peaks(model, read)
        quantized = run.quantize(model)
        if quantized is None:
            return PassResult(model, False, run.stats, run.skipped)
        if shared:
            left_plain = restore(quantized, shared)
            run.skipped.extend(left_plain)
            run.stats["codebook_weights"] = len(shared)
        return PassResult(quantized, True, run.stats, run.skipped)


def decline_reason(model: onnx.ModelProto) -> str | None:
    """Why the model must be left alone, or None."""
    present = quantized_ops(model)
    if present:
        return f"model declined: already quantized ({', '.join(present)} present)"
    if default_opset(model) < 10:
        return "model declined: opset < 10 has no QuantizeLinear/DequantizeLinear"
    return None


def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """The quantized op types present in the main graph, sorted."""
    return sorted({n.op_type for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES})
