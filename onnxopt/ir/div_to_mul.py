"""Turn a `Div` by a floating-point constant into a `Mul` by its reciprocal.

Exports of hard-swish (`x * clip(x + 3, 0, 6) / 6`: PaddlePaddle's, older PyTorch's) and of
normalizations divide by constants. ONNX Runtime has an int8 Mul (QLinearMul) and no int8 Div,
so a Div keeps a DequantizeLinear/QuantizeLinear pair around it in every int8 block, and blocks
the int8 Add and Mul next to it (`quantization/plan.py` quantizes them only between int8
neighbours). `x / c` and `x * (1 / c)` differ by at most about one unit in the last place
(nothing when c is a power of two).

The rule: a Div folds when it is in the ONNX domain and its divisor (input 1) is a constant of
a floating-point type whose reciprocals are all finite (no zero, no subnormal). Divisors that
are not constants are the model's arithmetic, not a rewrite candidate, and are not reported;
a constant divisor that fails the rule keeps its Div, with the reason.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, Names, is_onnx_domain, make_tensor


def divs_to_muls(graph: onnx.GraphProto) -> tuple[int, list[str]]:
    """Rewrite every such Div of `graph` (main graph only); returns (rewritten, one reason per
    Div by a constant that is kept)."""
    index, names = GraphIndex(graph), Names(graph)
    reciprocals: dict[str, str] = {}  # divisor -> its reciprocal's initializer
    rewritten, kept = 0, []
    for node in graph.node:
        if node.op_type != "Div" or not is_onnx_domain(node) or len(node.input) != 2:
            continue
        divisor = index.constant(node.input[1])
        if divisor is None:
            continue
        reciprocal = _reciprocal(divisor)
        if isinstance(reciprocal, str):
            kept.append(f"Div '{node.name or node.output[0]}' kept: {reciprocal}")
            continue
        if node.input[1] not in reciprocals:
            name = names.fresh(f"{node.input[1]}_reciprocal")
            graph.initializer.append(make_tensor(name, reciprocal))
            reciprocals[node.input[1]] = name
        node.op_type = "Mul"
        node.input[1] = reciprocals[node.input[1]]
        rewritten += 1
    return rewritten, kept


def _reciprocal(divisor: np.ndarray) -> np.ndarray | str:
    """1 / divisor in the divisor's type, or why the Div stays."""
    if divisor.dtype.kind != "f":
        return f"{divisor.dtype} divisor (integer division truncates)"
    with np.errstate(divide="ignore", over="ignore"):
        reciprocal = (1.0 / divisor.astype(np.float64)).astype(divisor.dtype)
    if not np.all(np.isfinite(reciprocal)):
        return "the divisor has a 0 or a value whose reciprocal overflows"
    return reciprocal
