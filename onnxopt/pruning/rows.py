"""Least-squares rows of one layer: sampled (input, target) pairs per op type.

A layer's rows are drawn once per calibration batch: `sample` picks where (image and output
position for a Conv, row for a MatMul, every sample for a Gemm) from the teacher's output,
`targets` reads the teacher there and `inputs` reads the student's input there (im2col patches
for a Conv), so the two sides line up although they come from different runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxopt.ir.graph import node_attr
from onnxopt.ir.layers import conv_pads, conv_windows


@dataclass(frozen=True)
class Where:
    """Chosen rows: image `n` and output position (`oy`, `ox`) for a Conv, flat `rows` otherwise."""

    n: np.ndarray | None = None
    oy: np.ndarray | None = None
    ox: np.ndarray | None = None
    out_hw: tuple[int, int] = (0, 0)
    rows: np.ndarray | None = None


class LayerRows:
    """Row sampling for one Conv (2-D), Gemm or MatMul layer."""

    def __init__(self, node: onnx.NodeProto, weight_shape: tuple[int, ...]) -> None:
        assert self.supports(node.op_type, weight_shape), (node.op_type, weight_shape)
        self.node = node
        self.op_type = node.op_type
        self.kernel = tuple(int(k) for k in weight_shape[2:])

    @staticmethod
    def supports(op_type: str, weight_shape: tuple[int, ...]) -> bool:
        """Whether rows can be drawn for this layer: a 2-D Conv, a Gemm or a MatMul."""
        return op_type in ("Gemm", "MatMul") or (op_type == "Conv" and len(weight_shape) == 4)

    def out_axis(self, ndim: int) -> int:
        return ndim - 1 if self.op_type == "MatMul" else 1

    def sample(self, y: np.ndarray, positions: int, rng: np.random.Generator) -> Where:
        if self.op_type == "Gemm":
            return Where()
        if self.op_type == "MatMul":
            total = int(np.prod(y.shape[:-1]))
            limit = positions * (y.shape[0] if y.ndim > 2 else 1)
            rows = (
                np.arange(total)
                if total <= limit
                else np.sort(rng.choice(total, limit, replace=False))
            )
            return Where(rows=rows)
        batch, out_h, out_w = y.shape[0], y.shape[2], y.shape[3]
        per_image = out_h * out_w
        if per_image <= positions:
            chosen = np.tile(np.arange(per_image), (batch, 1))
        else:
            chosen = np.stack(
                [rng.choice(per_image, positions, replace=False) for _ in range(batch)]
            )
        oy, ox = np.divmod(chosen.reshape(-1), out_w)
        n = np.repeat(np.arange(batch), chosen.shape[1])
        return Where(n=n, oy=oy, ox=ox, out_hw=(out_h, out_w))

    def targets(self, y: np.ndarray, where: Where) -> np.ndarray:
        if self.op_type == "Gemm":
            return y
        if self.op_type == "MatMul":
            return y.reshape(-1, y.shape[-1])[where.rows]
        return y[where.n, :, where.oy, where.ox]

    def inputs(self, x: np.ndarray, where: Where) -> np.ndarray:
        if self.op_type == "Gemm":
            return x.reshape(x.shape[0], -1)
        if self.op_type == "MatMul":
            return x.reshape(-1, x.shape[-1])[where.rows]
        return self._patches(x, where)

    def _patches(self, x: np.ndarray, where: Where) -> np.ndarray:
        node = self.node
        sh, sw = node_attr(node, "strides", [1, 1])
        dh, dw = node_attr(node, "dilations", [1, 1])
        top, left, bottom, right = conv_pads(node, x.shape[2:], self.kernel, (sh, sw), (dh, dw))
        windows = conv_windows(x, (top, left, bottom, right), self.kernel, (dh, dw))
        patches = windows[where.n, :, where.oy * sh, where.ox * sw]  # (rows, C, kh, kw)
        return patches.reshape(len(where.n), -1)


def target_rows(y_shape: tuple | None, op_type: str, positions: int) -> int:
    """Rows a layer keeps per sample (for memory estimates)."""
    if op_type == "Gemm":
        return 1
    if y_shape is None or not all(isinstance(d, int) for d in y_shape[1:]):
        return positions
    spatial = int(np.prod(y_shape[2:])) if op_type == "Conv" else int(np.prod(y_shape[1:-1]))
    return min(positions, max(spatial, 1))
