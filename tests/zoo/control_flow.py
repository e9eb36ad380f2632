"""A small conv model whose ONNX graph has an ``If`` node with weights inside its branches.

The torch exporters cannot put initializers inside ``If`` branches, so the ONNX file is built
with ``onnx.helper`` from the weights of ``IfModel``, whose eager ``forward`` is the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.zoo.export import MAX_IR_VERSION, seeded


class IfModel(nn.Module):
    """Conv -> ReLU -> GlobalAvgPool -> Flatten, then one of two Linear heads.

    The ``then`` head is used when the mean of the whole input batch is > 0, else the ``else``
    head: a data-dependent condition, one branch taken per batch.
    """

    def __init__(self, channels: int = 8, num_classes: int = 4, *, seed: int = 0) -> None:
        super().__init__()
        with seeded(seed):
            self.conv = nn.Conv2d(3, channels, 3, padding=1)
            self.then_head = nn.Linear(channels, num_classes)
            self.else_head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1), 1)
        return self.then_head(h) if x.mean() > 0 else self.else_head(h)


def _float_info(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _branch(name: str, head: nn.Linear) -> onnx.GraphProto:
    """``pooled @ W + b`` with W and b stored as initializers of the branch graph itself."""
    weight = head.weight.detach().numpy().T.copy()
    bias = head.bias.detach().numpy().copy()
    nodes = [
        helper.make_node("MatMul", ["pooled", f"{name}.weight"], [f"{name}.matmul"]),
        helper.make_node("Add", [f"{name}.matmul", f"{name}.bias"], [f"{name}.out"]),
    ]
    return helper.make_graph(
        nodes,
        f"{name}_branch",
        inputs=[],
        outputs=[_float_info(f"{name}.out", ["batch", None])],
        initializer=[
            numpy_helper.from_array(weight, f"{name}.weight"),
            numpy_helper.from_array(bias, f"{name}.bias"),
        ],
    )


def build_if_model(model: IfModel) -> onnx.ModelProto:
    """The ONNX equivalent of ``model`` (input "input" Nx3xHxW, output "logits")."""
    conv = model.conv
    num_classes = model.then_head.out_features
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight", "conv.bias"], ["conv"], pads=[1] * 4),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["pooled"], axis=1),
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Greater", ["mean", "zero"], ["cond"]),
        helper.make_node(
            "If",
            ["cond"],
            ["logits"],
            then_branch=_branch("then_head", model.then_head),
            else_branch=_branch("else_head", model.else_head),
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_model",
        inputs=[_float_info("input", ["batch", 3, None, None])],
        outputs=[_float_info("logits", ["batch", num_classes])],
        initializer=[
            numpy_helper.from_array(conv.weight.detach().numpy().copy(), "conv.weight"),
            numpy_helper.from_array(conv.bias.detach().numpy().copy(), "conv.bias"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        ],
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests.zoo"
    )
    onnx_model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def make_if_model_onnx(path: str | Path, seed: int = 0) -> Path:
    """Write ``build_if_model(IfModel(seed=seed))`` to ``path`` (opset 17, IR version 10)."""
    path = Path(path)
    onnx.save(build_if_model(IfModel(seed=seed).eval()), str(path))
    return path
