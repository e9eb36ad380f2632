"""The records of the channel-group analysis (`channel_groups`): layouts, groups, node roles,
and the `Builder` that the op table (`channel_rules`) fills while walking the graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxopt.ir.graph import GraphIndex, default_opset
from onnxopt.ir.shapes import ShapeInfo
from onnxopt.ir.tensors import iter_graphs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """Channels [start, stop) of `group`, in group coordinates."""

    group: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Layout:
    """How the channel axis of one tensor maps onto groups.

    The tensor's channel axis `axis` (of `rank` axes) holds the segments' channels one after
    the other; each channel spans `block` consecutive entries (Flatten of CxHxW: block H*W).
    """

    axis: int
    rank: int
    segments: tuple[Segment, ...]
    block: int = 1

    @property
    def channels(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def size(self) -> int:
        """Length of the tensor's channel axis."""
        return self.channels * self.block

    def moved(self, axis: int, rank: int, block: int | None = None) -> Layout:
        return replace(self, axis=axis, rank=rank, block=self.block if block is None else block)


@dataclass(frozen=True)
class ParamSlice:
    """Slice the constant at `node.input[input_index]` along `axis` by `tensor`'s kept entries."""

    input_index: int
    axis: int
    tensor: str


@dataclass(frozen=True)
class Fixup:
    """An attribute or shape constant that must follow a channel count.

    kind 'conv_group': the Conv's `group` becomes the kept channels of `tensor`;
    'split': the Split's sizes become its outputs' kept channels;
    'reshape': entry `position` of the Reshape's shape constant becomes `tensor`'s kept size
    (when that entry is a literal, not 0 or -1).
    """

    kind: str
    tensor: str = ""
    position: int = 0


@dataclass(frozen=True)
class NodeRole:
    """What the rewrite must do at one node (index into graph.node) when channels go."""

    node: int
    kind: str
    params: tuple[ParamSlice, ...] = ()
    fixups: tuple[Fixup, ...] = ()


@dataclass(frozen=True)
class Source:
    """A layer whose output channels make up (part of) a group: weight axis `axis` is sliced."""

    node: int
    name: str
    op_type: str
    output: str


@dataclass(frozen=True)
class Consumer:
    """A layer that reads channels and mixes them: input slices of removed channels are dropped.

    `weight_axis` of the constant at `node.input[weight_index]` indexes `input`'s channels.
    """

    node: int
    name: str
    op_type: str
    input: str
    output: str
    weight_index: int
    weight_axis: int


@dataclass
class ChannelGroup:
    id: int
    size: int
    sources: list[Source] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return bool(self.sources) and not self.reasons

    def describe(self) -> str:
        names = [s.name for s in self.sources]
        shown = ", ".join(f"'{n}'" for n in names[:3]) + (
            f" (+{len(names) - 3})" if len(names) > 3 else ""
        )
        return f"channels of {shown}" if names else f"group {self.id}"


@dataclass
class ChannelGroups:
    """The result: groups, per-tensor layouts, per-node roles, consumers, Split ranges."""

    groups: list[ChannelGroup]
    layouts: dict[str, Layout]
    roles: list[NodeRole]
    consumers: list[Consumer]
    ranges: list[Segment] = field(default_factory=list)

    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def refusals(self) -> list[str]:
        """One line per group that has prunable layers but is blocked, with its reasons."""
        return [
            f"{g.describe()} not pruned: {'; '.join(g.reasons)}"
            for g in self.groups
            if g.sources and g.reasons
        ]

    def kept_entries(self, tensor: str, keep: dict[int, np.ndarray]) -> np.ndarray | None:
        """Indices along `tensor`'s channel axis that survive when group g keeps `keep[g]`.

        Groups missing from `keep` keep every channel. None when the tensor has no layout.
        """
        layout = self.layouts.get(tensor)
        if layout is None:
            return None
        return kept_entries(layout, keep)


def kept_entries(layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    parts, offset = [], 0
    for seg in layout.segments:
        kept = keep.get(seg.group)
        if kept is None:
            local = np.arange(seg.size)
        else:
            kept = np.asarray(kept)
            local = kept[(kept >= seg.start) & (kept < seg.stop)] - seg.start
        parts.append(local + offset)
        offset += seg.size
    channels = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if layout.block == 1:
        return channels
    return (channels[:, None] * layout.block + np.arange(layout.block)).reshape(-1)


class Builder:
    """Mutable state of the walk: union-find over groups, layouts, roles. Used by the rules."""

    def __init__(self, model: onnx.ModelProto, shapes: ShapeInfo) -> None:
        self.model = model
        self.graph = model.graph
        self.opset = default_opset(model)
        self.index = GraphIndex(model.graph)
        self.shapes = shapes
        self.parent: list[int] = []
        self.sizes: list[int] = []
        self.reasons: list[list[str]] = []
        self.sources: list[list[Source]] = []
        self.layouts: dict[str, Layout] = {}
        self.roles: list[NodeRole] = []
        self.consumers: list[Consumer] = []
        self.ranges: list[Segment] = []

    # --- groups -------------------------------------------------------------------------
    def new_group(self, size: int, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.sizes.append(int(size))
        self.reasons.append([reason] if reason else [])
        self.sources.append([])
        return len(self.parent) - 1

    def find(self, group: int) -> int:
        root = group
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[group] != root:
            self.parent[group], group = root, self.parent[group]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        keep, drop = min(ra, rb), max(ra, rb)
        self.parent[drop] = keep
        self.reasons[keep].extend(r for r in self.reasons[drop] if r not in self.reasons[keep])
        self.sources[keep].extend(self.sources[drop])

    def block(self, layout: Layout | None, reason: str) -> None:
        if layout is None:
            return
        for seg in layout.segments:
            reasons = self.reasons[self.find(seg.group)]
            if reason not in reasons:
                reasons.append(reason)

    def block_tensor(self, name: str, reason: str) -> None:
        self.block(self.layouts.get(name), reason)

    def opaque(self, node: onnx.NodeProto, reason: str) -> None:
        """Block every group the node reads; its outputs carry no tracked channels."""
        names = set(node.input) | self.implicit_inputs(node)
        for name in sorted(n for n in names if n):
            self.block_tensor(name, reason)
        for name in node.output:
            self.layouts.pop(name, None)

    def refuse(self, node: onnx.NodeProto, why: str) -> None:
        """`opaque`, for an op in the table met in a configuration its rule does not handle."""
        self.opaque(node, f"{node.op_type} '{self.node_name(node)}' {why}")

    def is_full(self, layout: Layout) -> bool:
        """Whether the layout is exactly one whole group."""
        if len(layout.segments) != 1:
            return False
        seg = layout.segments[0]
        return seg.start == 0 and seg.stop == self.sizes[self.find(seg.group)]

    def same_channels(self, a: Layout, b: Layout) -> bool:
        resolve = lambda lay: [(self.find(s.group), s.start, s.stop) for s in lay.segments]  # noqa: E731
        return a.block == b.block and resolve(a) == resolve(b)

    def couple(self, a: Layout, b: Layout, reason: str) -> bool:
        """Make two layouts carry the same channels; block both (False) when they cannot."""
        if self.same_channels(a, b):
            return True
        if a.block == b.block and self.is_full(a) and self.is_full(b) and a.channels == b.channels:
            self.union(a.segments[0].group, b.segments[0].group)
            return True
        self.block(a, reason)
        self.block(b, reason)
        return False

    # --- tensors and nodes --------------------------------------------------------------
    def layout(self, name: str) -> Layout | None:
        return self.layouts.get(name) if name else None

    def set_layout(self, name: str, layout: Layout | None) -> None:
        if name and layout is not None:
            self.layouts[name] = layout

    def new_source(
        self, position: int, node: onnx.NodeProto, size: int, axis: int, rank: int
    ) -> Layout:
        group = self.new_group(size)
        source = Source(position, self.node_name(node), node.op_type, node.output[0])
        self.sources[group].append(source)
        layout = Layout(axis, rank, (Segment(group, 0, size),))
        self.set_layout(node.output[0], layout)
        return layout

    def add_role(self, role: NodeRole) -> None:
        self.roles.append(role)

    def node_name(self, node: onnx.NodeProto) -> str:
        return node.name or (node.output[0] if node.output else node.op_type)

    def rank(self, name: str) -> int | None:
        layout = self.layouts.get(name)
        if layout is not None:
            return layout.rank
        constant = self.index.constant(name)
        if constant is not None:
            return constant.ndim
        shape = self.shapes.shape(name)
        return None if shape is None else len(shape)

    def shape(self, name: str) -> tuple | None:
        constant = self.index.constant(name)
        if constant is not None:
            return constant.shape
        return self.shapes.shape(name)

    def implicit_inputs(self, node: onnx.NodeProto) -> set[str]:
        """Outer tensors a node's subgraphs read by name."""
        names: set[str] = set()
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                for graph in iter_graphs(sub):
                    names.update(
                        n for node_ in graph.node for n in node_.input if n in self.layouts
                    )
        return names

    # --- result -------------------------------------------------------------------------
    def finish(self) -> ChannelGroups:
        roots = sorted({self.find(g) for g in range(len(self.parent))})
        renumber = {root: i for i, root in enumerate(roots)}
        groups = [
            ChannelGroup(renumber[r], self.sizes[r], list(self.sources[r]), list(self.reasons[r]))
            for r in roots
        ]

        def resolve(layout: Layout) -> Layout:
            segments = tuple(
                Segment(renumber[self.find(s.group)], s.start, s.stop) for s in layout.segments
            )
            return replace(layout, segments=segments)

        layouts = {name: resolve(layout) for name, layout in self.layouts.items()}
        ranges = [Segment(renumber[self.find(s.group)], s.start, s.stop) for s in self.ranges]
        return ChannelGroups(groups, layouts, list(self.roles), list(self.consumers), ranges)
