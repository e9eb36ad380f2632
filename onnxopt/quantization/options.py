"""Options of the `quant` pass (typed, with a default and a doc each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxopt.infra.options import option


@dataclass(frozen=True)
class QuantOptions:
    method: Literal["minmax", "percentile", "entropy", "mse"] = option(
        "percentile", "activation range calibration method"
    )
    percentile: float = option(99.99, "percentile kept by method=percentile", low=90.0, high=100.0)
    activations: Literal["auto", "static", "dynamic"] = option(
        "auto",
        "static: calibrated ranges in QDQ; dynamic: MatMul/Gemm activations quantized per run "
        "(DynamicQuantizeMatMul); auto: dynamic for transformer-like graphs, else static",
    )
    int8_tables: bool = option(
        True,
        "dynamic activations: store embedding tables (a Gather of a constant matrix) int8, one "
        "scale per row",
    )
    activation_type: Literal["auto", "uint8", "int8"] = option(
        "auto", "activation integer type; auto: uint8 on cpu (U8S8 kernels), int8 on cuda"
    )
    symmetric_activations: bool = option(
        False, "zero point fixed at the type's middle (TensorRT style)"
    )
    per_channel: bool = option(True, "one weight scale per output channel")
    equalize: bool = option(
        True,
        "channel equalization: CLE (Conv->Relu->Conv), residual streams, SmoothQuant (LayerNorm)",
    )
    rounding: Literal["nearest", "gptq"] = option(
        "gptq", "weight rounding: to nearest, or GPTQ (error feedback on calibration data)"
    )
    bias_correction: bool = option(
        False,
        "correct each layer's mean output shift from weight rounding (calibration data); "
        "off by default: GPTQ already fits each layer's outputs, mean included",
    )
    attention: bool = option(False, "also quantize MatMuls of two activations (attention scores)")
    exclude: tuple[str, ...] = option((), "node names (globs) or op types to keep in float")
    target_cosine: float | None = option(
        None, "keep the fewest sensitive layers float so output cosine >= this", low=0.0, high=1.0
    )
    target_top1: float | None = option(
        None, "keep the fewest sensitive layers float so top-1 agreement >= this", low=0.0, high=1.0
    )
    calib_samples: int | None = option(None, "use at most this many calibration samples", low=1)
    histogram_bins: int = option(
        4096, "histogram bins per tensor (percentile/entropy/mse)", low=512, high=65536
    )
    float_stem: bool = option(
        True,
        "keep an image stem (3x3 Conv on an RGB graph input) and the depthwise block after it "
        "float on cpu: faster there",
    )
    prepare: bool = option(
        True, "have the pass manager run cleanup (BatchNorm, constant folding) right before"
    )
    min_cosine: float = option(
        0.9, "roll back when the output cosine on real data falls below this", low=0.0, high=1.0
    )
    auto_fallback: float | None = option(
        0.03,
        "static activations, no target set: when the worst output cosine on the calibration "
        "data is below min_cosine + this margin (for data the pass did not see), keep the "
        "fewest sensitive layers float to reach it instead of being rolled back; None: no search",
        low=0.0,
        high=1.0,
    )
