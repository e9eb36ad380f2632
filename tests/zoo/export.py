"""Export torch modules to ONNX files that ONNX Runtime 1.31 accepts.

The legacy TorchScript exporter (``dynamo=False``) is used: it writes compact graphs with
named initializers. Two of its habits are undone so the graphs look like real models:
BatchNormalization is kept (not folded into Conv), and initializers that the exporter
aliased through ``Identity`` because their values were equal become plain initializers again.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import onnx
import torch

MAX_IR_VERSION = 10
"""Highest ONNX IR version written; onnxruntime 1.31 refuses the IR 14 that onnx 1.23 writes."""

_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
_EXPORTER_NOISE = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "It is recommended that constant folding be turned off",
)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randomize_norms(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every BatchNorm/LayerNorm non-trivial affine parameters and running statistics.

    Freshly built norms are identities (weight 1, bias 0, mean 0, var 1), which makes BN
    folding trivial and makes all norm weights byte-identical; trained models look otherwise.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, _BATCH_NORMS):
                n = sub.num_features
                sub.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                sub.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
            if isinstance(sub, (*_BATCH_NORMS, torch.nn.LayerNorm)) and sub.weight is not None:
                sub.weight.copy_(0.5 + torch.rand(sub.weight.shape, generator=gen))
                sub.bias.copy_(0.1 * torch.randn(sub.bias.shape, generator=gen))
    return module


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple,
    path: str | Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    opset: int = 17,
) -> Path:
    """Export ``module`` in eval mode to ``path`` and return the path.

    The file has opset ``opset``, IR version <= 10 and passes ``onnx.checker`` (full check).
    """
    path = Path(path)
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        for message in _EXPORTER_NOISE:
            warnings.filterwarnings("ignore", message=message)
        torch.onnx.export(
            module,
            example_inputs,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in (dynamic_axes or {}).items()},
            opset_version=opset,
            dynamo=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    model = onnx.load(str(path))
    _inline_initializer_aliases(model.graph)
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _inline_initializer_aliases(graph: onnx.GraphProto) -> None:
    """Turn each ``Identity(initializer)`` node into a copy of the initializer (output's name)."""
    inits = {init.name: init for init in graph.initializer}
    outputs = {out.name for out in graph.output}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
