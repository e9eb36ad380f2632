"""Int8 embedding tables: a Gather of rows of a constant float matrix by runtime ids.

The table is stored as int8 codes with one symmetric scale per row; the Gather reads codes and
scales by the same ids and one Mul restores the rows:

    Gather(codes, ids) -> Cast(float) -> Mul(., Gather(scales (V x 1), ids)) -> rows

A quarter of the bytes (the word table is most of a small encoder's file); the work per run is
the gathered rows only, as before. Used with dynamic activations (see `dynamic`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxopt.ir.graph import GraphIndex, Names, is_onnx_domain, node_attr
from onnxopt.ir.qdq import add_initializers
from onnxopt.quantization.params import quantize_weight, weight_scales
from onnxopt.quantization.plan import excluded

FLOAT = onnx.TensorProto.FLOAT
MIN_ROWS = 16
"""Smaller tables are left alone: no bytes worth the two extra nodes."""


def plan_embeddings(
    model: onnx.ModelProto, exclude: tuple[str, ...], frozen: frozenset[str]
) -> tuple[dict[str, str], list[str]]:
    """(Gather node -> its table, why the other Gathers of constant float tables stay float)."""
    index = GraphIndex(model.graph)
    planned: dict[str, str] = {}
    skipped: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Gather" or not is_onnx_domain(node):
            continue
        table = index.constant(node.input[0])
        if table is None or table.dtype != np.float32 or index.is_constant(node.input[1]):
            continue  # data movement of activations, or a constant that folding removes
        reason = None
        if excluded(node, exclude):
            reason = "excluded by option"
        elif node.input[0] in frozen:
            reason = "table is a codebook (share): kept as its codebook"
        elif table.ndim != 2 or int(node_attr(node, "axis", 0)) != 0:
            reason = f"not a row lookup (rank {table.ndim}, axis {node_attr(node, 'axis', 0)})"
        elif table.shape[0] < MIN_ROWS:
            reason = f"{table.shape[0]} rows: too small to be worth it"
        if reason is None:
            planned[node.name] = node.input[0]
        else:
            skipped.append(f"Gather '{node.name}': {reason}; table stays float")
    return planned, skipped


def quantize_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes, float32 scales (rows x 1)): one symmetric scale per row."""
    scales = weight_scales(table, 0)
    return quantize_weight(table, scales, 0), scales.reshape(-1, 1)


def embedding_nodes(
    graph: onnx.GraphProto,
    names: Names,
    node: onnx.NodeProto,
    table: tuple[np.ndarray, np.ndarray],
    stored: dict[str, tuple[str, str]],
) -> list[onnx.NodeProto]:
    """The nodes replacing `node`; `stored` (float table -> its codes and scales initializers)
    lets Gathers of one table share one int8 copy."""
    base = node.name
    fresh = {k: names.fresh(f"{base}_{k}") for k in ("i8", "row_scale", "f")}
    if node.input[0] not in stored:
        stored[node.input[0]] = (names.fresh(f"{base}_codes"), names.fresh(f"{base}_scales"))
        add_initializers(graph, zip(stored[node.input[0]], table, strict=True))
    fresh["codes"], fresh["scales"] = stored[node.input[0]]
    ids = node.input[1]
    return [
        helper.make_node("Gather", [fresh["codes"], ids], [fresh["i8"]], name=names.fresh(base)),
        helper.make_node(
            "Gather", [fresh["scales"], ids], [fresh["row_scale"]],
            name=names.fresh(f"{base}_scale"),
        ),
        helper.make_node(
            "Cast", [fresh["i8"]], [fresh["f"]], to=FLOAT, name=names.fresh(f"{base}_Cast")
        ),
        helper.make_node(
            "Mul", [fresh["f"], fresh["row_scale"]], [node.output[0]],
            name=names.fresh(f"{base}_Mul"),
        ),
    ]  # fmt: skip
