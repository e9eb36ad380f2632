"""The handler table of the torch view: op type -> handler, and the check that a node fits it.

`HANDLERS` merges the explicit tables of the op modules (nothing registers itself on import);
`ATTRIBUTES` says, per op, the attributes its handler understands. `handler_for` refuses, with
a reason naming what it refuses: a domain other than the default ONNX one, an op type outside
the table, an attribute outside the op's set (an unknown attribute may change the result, so
it is never ignored). Handlers themselves raise `Unsupported` for values they cannot run
exactly (a mode, a dtype, training-only outputs): see each module's docstring.
"""

from __future__ import annotations

from types import ModuleType

from onnxopt.training import (
    ops_index,
    ops_math,
    ops_nn,
    ops_pool,
    ops_quant,
    ops_reduce,
    ops_resize,
    ops_shape,
)
from onnxopt.training.nodes import Handler, NodeView, Unsupported

MODULES: tuple[ModuleType, ...] = (
    ops_nn,
    ops_pool,
    ops_math,
    ops_reduce,
    ops_shape,
    ops_index,
    ops_resize,
    ops_quant,
)
DOMAINS = frozenset({"", "ai.onnx"})


def _merged(tables: list[dict]) -> dict:
    merged: dict = {}
    for table in tables:
        clash = merged.keys() & table.keys()
        if clash:
            raise RuntimeError(f"ops handled twice: {sorted(clash)}")
        merged.update(table)
    return merged


HANDLERS: dict[str, Handler] = _merged([m.HANDLERS for m in MODULES])
ATTRIBUTES: dict[str, frozenset[str]] = _merged([m.ATTRIBUTES for m in MODULES])
if HANDLERS.keys() != ATTRIBUTES.keys():
    raise RuntimeError("every handled op declares the attributes it understands")


def handler_for(node: NodeView) -> Handler:
    """The handler running `node`; Unsupported naming the op, node and reason otherwise."""
    where = f"op '{node.op_type}' (node '{node.name}')"
    if node.node.domain not in DOMAINS:
        raise Unsupported(f"{where}: domain '{node.node.domain}' is not the ONNX default")
    if node.op_type not in HANDLERS:
        raise Unsupported(f"{where}: no torch handler for this op type")
    unknown = sorted(set(node.attrs) - ATTRIBUTES[node.op_type])
    if unknown:
        raise Unsupported(f"{where}: attribute '{unknown[0]}' is not understood by its handler")
    return HANDLERS[node.op_type]
