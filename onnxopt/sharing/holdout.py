"""How much a layer's refit error on the calibration rows understates its error on unseen inputs.

A layer that sees few rows per input (a classifier: one pooled vector per image, 128 rows for
1280 inputs) is fit closely to those rows: error feedback and the centroid refit promise errors
that held-out inputs do not get (MobileNetV2's classifier: 1.75x at 2-4 bits on 300 held-out
crops). For such layers the probe codebook is refit on half of the rows and measured on the other
half, both ways; the allocation scales the layer's errors by that ratio. Layers with many rows per
input (convolutions: every output position is a row) are taken at their word.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.analyses.input_moments import Moments
from onnxopt.analyses.weights import Weight
from onnxopt.data.sources import DataSource
from onnxopt.runtime.probe import stream_tensors
from onnxopt.sharing.fit import LayerModel, fit

FEW_ROWS_PER_INPUT = 4
MIN_ROWS = 16


def few_row_weights(layers: dict[str, LayerModel]) -> list[Weight]:
    """Weights of Gemm/MatMul layers fit from fewer than FEW_ROWS_PER_INPUT rows per input."""
    return [
        layer.weight
        for layer in layers.values()
        if layer.op_type != "Conv"
        and layer.rows < FEW_ROWS_PER_INPUT * layer.measured.shape[-1]
        and layer.rows >= MIN_ROWS
    ]


def optimism(
    model: onnx.ModelProto,
    weights: list[Weight],
    data: DataSource,
    samples: int,
    bits: int,
    iterations: int,
    provider: str,
) -> dict[str, float]:
    """Per weight: held-out over in-sample output error of its `bits`-bit refit codebook (>= 1)."""
    if not weights:
        return {}
    tensors = sorted({w.layer.tensor for w in weights})
    rows: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for batch, _ in stream_tensors(model, tensors, data, provider=provider, max_samples=samples):
        for name in (n for n in tensors if n in batch):
            value = batch[name]
            rows[name].append(value.reshape(-1, value.shape[-1]).astype(np.float64))
    factors = {}
    for weight in weights:
        x = np.concatenate(rows[weight.layer.tensor])
        half = len(x) // 2
        ratios = []
        for seen, unseen in ((x[:half], x[half:]), (x[half:], x[:half])):
            fitted = fit(weight, bits, None, _layer(weight, seen), iterations)
            held_out = _layer(weight, unseen).output_error(fitted.book.decoded() - weight.value)
            if fitted.output_error > 0:
                ratios.append(held_out / fitted.output_error)
        if ratios:
            factors[weight.tensor] = max(1.0, float(np.mean(ratios)))
    return factors


def _layer(weight: Weight, rows: np.ndarray) -> LayerModel:
    return LayerModel(weight, Moments(rows.T @ rows, len(rows)))
