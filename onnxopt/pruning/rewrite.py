"""Apply a channel selection to a model: slice constants, fix attributes and shape constants.

`apply_keep(model, groups, keep)` removes, for every group g in `keep`, the channels not in
`keep[g]` from every tensor that carries them (the roles recorded by the channel analysis say
which constants and attributes follow). Sliced constants become new initializers (a constant
may be shared with a node that slices it differently); the originals are dropped when unused.
Stale shape annotations of changed tensors are removed and the result passes strict shape
inference.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import onnx

from onnxopt.analyses.channel_groups import ChannelGroups, Fixup, NodeRole
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import GraphIndex, Names, default_opset, make_tensor, set_attribute
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.ir.tensors import iter_graphs

log = logging.getLogger(__name__)

Keep = dict[int, np.ndarray]


class Rewriter:
    """One rewrite of `model` (mutated in place) for one selection."""

    def __init__(self, model: onnx.ModelProto, groups: ChannelGroups, keep: Keep) -> None:
        self.model = model
        self.graph = model.graph
        self.groups = groups
        self.keep = {g: np.sort(np.asarray(k, dtype=np.int64)) for g, k in keep.items()}
        self.index = GraphIndex(model.graph)
        self.names = Names(self.graph)
        self.names.taken |= {
            name for g in iter_graphs(self.graph) for n in g.node for name in (*n.input, *n.output)
        }
        self._kept: dict[str, np.ndarray] = {}

    def kept(self, tensor: str) -> np.ndarray:
        if tensor not in self._kept:
            self._kept[tensor] = self.groups.kept_entries(tensor, self.keep)
        return self._kept[tensor]

    def changed(self, tensor: str) -> bool:
        layout = self.groups.layouts.get(tensor)
        return layout is not None and len(self.kept(tensor)) != layout.size

    def run(self) -> onnx.ModelProto:
        for role in self.groups.roles:
            node = self.graph.node[role.node]
            self._slice_params(node, role)
            for fixup in role.fixups:
                FIXUPS[fixup.kind](self, node, fixup)
        self._drop_stale_shapes()
        remove_dead_code(self.model)
        return self.model

    def _slice_params(self, node: onnx.NodeProto, role: NodeRole) -> None:
        by_input = defaultdict(list)
        for param in role.params:
            if self.changed(param.tensor):
                by_input[param.input_index].append(param)
        for input_index, params in sorted(by_input.items()):
            value = self.index.constant(node.input[input_index])
            for param in params:
                value = np.take(value, self.kept(param.tensor), axis=param.axis)
            self.replace_input(node, input_index, value, "pruned")

    def replace_input(
        self, node: onnx.NodeProto, input_index: int, value: np.ndarray, tag: str
    ) -> None:
        """Point `node.input[input_index]` at a new initializer holding `value`."""
        name = self.names.fresh(f"{node.input[input_index]}.{tag}")
        self.graph.initializer.append(make_tensor(name, value))
        node.input[input_index] = name

    def _drop_stale_shapes(self) -> None:
        keep = [v for v in self.graph.value_info if not self.changed(v.name)]
        del self.graph.value_info[:]
        self.graph.value_info.extend(keep)


def _fix_conv_group(rw: Rewriter, node: onnx.NodeProto, fixup: Fixup) -> None:
    if rw.changed(fixup.tensor):
        set_attribute(node, "group", len(rw.kept(fixup.tensor)))


def _fix_split(rw: Rewriter, node: onnx.NodeProto, fixup: Fixup) -> None:
    if not any(rw.changed(out) for out in node.output):
        return
    sizes = np.array([len(rw.kept(out)) for out in node.output], dtype=np.int64)
    if np.any(sizes == 0):
        raise ValueError(f"Split '{node.name}' would have an empty output")
    if default_opset(rw.model) >= 13:
        for i, attr in enumerate(node.attribute):
            if attr.name == "num_outputs":
                del node.attribute[i]
                break
        if len(node.input) > 1 and node.input[1]:
            rw.replace_input(node, 1, sizes, "pruned")
        else:
            name = rw.names.fresh(f"{node.name or node.output[0]}.split_pruned")
            rw.graph.initializer.append(make_tensor(name, sizes))
            if len(node.input) > 1:
                node.input[1] = name
            else:
                node.input.append(name)
    else:
        set_attribute(node, "split", sizes.tolist())


def _fix_reshape(rw: Rewriter, node: onnx.NodeProto, fixup: Fixup) -> None:
    if not rw.changed(fixup.tensor):
        return
    target = rw.index.constant(node.input[1]).copy()
    target.reshape(-1)[fixup.position] = len(rw.kept(fixup.tensor))
    rw.replace_input(node, 1, target, "pruned")


FIXUPS = {"conv_group": _fix_conv_group, "split": _fix_split, "reshape": _fix_reshape}


def apply_keep(model: onnx.ModelProto, groups: ChannelGroups, keep: Keep) -> onnx.ModelProto:
    """Prune `model` (mutated and returned) so group g keeps only the channels in `keep[g]`.

    `groups` must be the analysis of this very model. Groups absent from `keep` are untouched.
    """
    for group, kept in keep.items():
        info = groups.groups[group]
        if not info.prunable:
            raise ValueError(f"group {group} ({info.describe()}) is not prunable")
        if len(kept) == 0:
            raise ValueError(f"group {group} would keep no channel")
    pruned = Rewriter(model, groups, keep).run()
    if stored_bytes(pruned) <= PROTOBUF_SAFE_BYTES:  # in-memory inference serializes the model
        onnx.shape_inference.infer_shapes(pruned, check_type=True, strict_mode=True, data_prop=True)
    return pruned


def changed_tensors(groups: ChannelGroups, keep: Keep) -> set[str]:
    """Tensors that lose entries when the groups keep `keep`."""
    return {
        name
        for name, layout in groups.layouts.items()
        if len(groups.kept_entries(name, keep)) != layout.size
    }


def consumer_masks(groups: ChannelGroups, keep: Keep) -> dict[str, tuple[int, int, np.ndarray]]:
    """Per consumer node name: (weight input index, weight axis, removed input entries).

    The correctness oracle: the pruned model equals the original in which each consumer's
    weight slices for these entries are zeroed.
    """
    masks = {}
    for consumer in groups.consumers:
        layout = groups.layouts[consumer.input]
        kept = groups.kept_entries(consumer.input, keep)
        removed = np.setdiff1d(np.arange(layout.size), kept)
        masks[consumer.name] = (consumer.weight_index, consumer.weight_axis, removed)
    return masks
