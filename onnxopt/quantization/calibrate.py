"""Calibration: the value ranges of the planned tensors (min/max, or streaming histograms of
`onnxopt.numerics.histogram` and a range chosen from them by percentile, entropy or MSE), the
per-channel peaks that equalization needs, and the input moments GPTQ needs, gathered in the
same pass over the calibration data through the tensor probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from onnxopt.analyses.input_moments import LayerInput, RowBudget, accumulate
from onnxopt.data.sources import DataSource
from onnxopt.numerics.histogram import StreamingHistogram, choose_range
from onnxopt.quantization.options import QuantOptions
from onnxopt.runtime.probe import TensorProbe

EQUALIZE_SAMPLES = 32
GPTQ_SAMPLES = 64
"""Channel peaks for equalization and GPTQ's input moments come from the first samples only: on
MobileNetV2 (300 calibration, 1200 agreement crops) 32 instead of 128 and 128 instead of 256
samples left the output cosine at 0.9963 (+-0.00005); calibration main-thread CPU time went from
7.7 to 5.5 s. 64 instead of 128 GPTQ samples: cosine 0.99658 vs 0.99656, top-1 93.1 vs 93.3 %
(1200 crops, standard error 0.7), 0.5 s less."""
GPTQ_ROWS = RowBudget(samples=GPTQ_SAMPLES, rows_per_column=128, min_rows=2048)
"""Input rows per layer entering GPTQ's H, taken evenly from every sample: 128 per weight column,
at least 2048. GPTQ's own setup (128 sequences x 2048 tokens) gives its widest layers 21 or fewer
rows per column. Early large maps and depthwise layers had up to 100x more rows than this; on
MobileNetV2 the output cosine moved by under 0.0002 (noise level), Hessian time fell 3x. Late,
wide layers have fewer rows and keep all of them. A floor of 2048 instead of 8192 rows (it binds the
depthwise layers: 9 columns) left the cosine on 1200 crops at 0.9966 and cut moment gathering
from 2.0 to 1.4 s."""
DEPTHWISE_GPTQ_ROWS = RowBudget(samples=16, rows_per_column=128, min_rows=2048)
"""Depthwise layers take their rows from the first 16 samples: their H is per channel and small
(k*k columns), and on small late maps every position entered it, 1152 channels x 25 columns on
EfficientNet-Lite0's 5x5 layers (1.3 of its 2.2 s of moment gathering). MobileNetV2, 1200 crops:
cosine 0.99669 vs 0.99672 with 64 samples; without GPTQ on depthwise layers it was 0.99631."""


@dataclass
class MinMax:
    minimum: float = math.inf
    maximum: float = -math.inf
    count: int = 0

    def update(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        lo, hi = float(values.min()), float(values.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                return
            lo, hi = float(finite.min()), float(finite.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        self.count += values.size


Stats = MinMax | StreamingHistogram


def new_stats(tensors: list[str], histogram: bool, bins: int) -> dict[str, Stats]:
    return {t: StreamingHistogram(max_bins=bins) if histogram else MinMax() for t in tensors}


class Calibrator:
    """Ranges of tensors of one float model, computed on first request and cached; the same
    pass over the data also gathers the input moments GPTQ needs."""

    def __init__(
        self, model: onnx.ModelProto, data: DataSource, options: QuantOptions, provider: str = "cpu"
    ) -> None:
        self.model = model
        self.data = data
        self.provider = provider
        self.options = options
        self.ranges: dict[str, tuple[float, float]] = {}
        self.samples = 0

    def ensure(self, tensors: list[str], layers: list[LayerInput] = ()) -> dict[str, np.ndarray]:
        """Compute the missing ranges of `tensors` and return the input moments of `layers`."""
        missing = [t for t in tensors if t not in self.ranges]
        if not missing and not layers:
            return {}
        method = self.options.method
        stats = new_stats(missing, method != "minmax", self.options.histogram_bins)
        hessians: dict[str, np.ndarray] = {}
        wanted = sorted(set(missing) | {layer.tensor for layer in layers})
        limit = self.options.calib_samples if missing else min_limit(self.options.calib_samples)
        seen = 0
        # One BLAS thread while ORT runs between the products: on a few cores, BLAS threads
        # waiting by spinning and ORT's threads take each other's cores (2-5x slower on 2 cores).
        with threadpool_limits(limits=1, user_api="blas"):
            probe = TensorProbe(self.model, wanted, self.provider)
            for batch, rows in probe.stream(self.data, limit):
                # A run of a large model may hold some of the tensors only (see `stream`).
                for name in missing:
                    if name in batch:
                        stats[name].update(np.asarray(batch[name], dtype=np.float32))
                for layer in layers:
                    budget = DEPTHWISE_GPTQ_ROWS if layer.depthwise else GPTQ_ROWS
                    if seen < budget.samples and layer.tensor in batch:
                        hessians[layer.node] = accumulate(
                            hessians.get(layer.node), batch[layer.tensor], layer, budget
                        )
                seen += rows
        self.samples = max(self.samples, seen if missing else 0)
        for name, stat in stats.items():
            if isinstance(stat, StreamingHistogram):
                self.ranges[name] = choose_range(stat, method, self.options.percentile)
            else:
                lo, hi = (stat.minimum, stat.maximum) if stat.count else (0.0, 0.0)
                self.ranges[name] = (min(lo, 0.0), max(hi, 0.0))
        return hessians


def min_limit(calib_samples: int | None) -> int:
    return GPTQ_SAMPLES if calib_samples is None else min(calib_samples, GPTQ_SAMPLES)


def channel_absmax(
    model: onnx.ModelProto,
    axes: dict[str, int],
    data: DataSource,
    *,
    provider: str,
    max_samples: int | None = None,
) -> dict[str, np.ndarray]:
    """Per tensor in `axes` (name -> channel axis), the largest |value| of each channel."""
    peaks: dict[str, np.ndarray] = {}
    names = sorted(axes)
    for batch, _ in TensorProbe(model, names, provider).stream(data, max_samples):
        for name in (n for n in names if n in batch):
            peak = _channel_absmax(np.asarray(batch[name], np.float32), axes[name])
            peaks[name] = peak if name not in peaks else np.maximum(peaks[name], peak)
    return peaks


def _channel_absmax(array: np.ndarray, axis: int) -> np.ndarray:
    """Largest |value| per index of `axis`, without an |array| copy. Large maps reduce their
    contiguous trailing axes first; small ones (7x7, 14x14) their leading axes first, as numpy
    reduces short rows slowly (4x faster on MobileNetV2's 8x960x7x7 batches)."""
    axis %= array.ndim
    leading, trailing = (int(np.prod(array.shape[a:b])) for a, b in ((0, axis), (axis + 1, None)))
    rows = array.reshape(leading, array.shape[axis], trailing)
    first, second = (2, 0) if trailing >= 1024 else (0, 1)
    highest = rows.max(axis=first).max(axis=second)
    lowest = rows.min(axis=first).min(axis=second)
    return np.maximum(highest, -lowest)
