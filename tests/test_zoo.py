"""The zoo's models export, pass the checker, keep their structure and match torch under ORT."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.zoo import (
    ConvBnReluNet,
    DigitsResNet,
    IfModel,
    MobileNetV2,
    TinyTransformer,
    export_onnx,
    make_convbnrelu_onnx,
    make_digits_cnn_onnx,
    make_if_model_onnx,
    make_mobilenet_v2_onnx,
    make_tiny_transformer_onnx,
    randomize_norms,
    seeded,
)
from tests.zoo.efficientnet import EfficientNetLite0

ATOL = 1e-4


def _ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def _torch_run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


def _op_counts(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _image_batch(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _tiny_mobilenet() -> MobileNetV2:
    with seeded(0):
        model = MobileNetV2(width_mult=0.35, num_classes=10)
    return randomize_norms(model, 0)


CASES = {
    "convbnrelu": (make_convbnrelu_onnx, lambda: ConvBnReluNet(seed=0), (2, 3, 32, 32)),
    "digits_cnn": (
        make_digits_cnn_onnx,
        lambda: randomize_norms(DigitsResNet(seed=0), 0),
        (2, 1, 8, 8),
    ),
    "mobilenet_v2": (make_mobilenet_v2_onnx, _tiny_mobilenet, (2, 3, 64, 64)),
    "tiny_transformer": (make_tiny_transformer_onnx, lambda: TinyTransformer(seed=0), (2, 16, 32)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_is_valid_and_matches_torch(name: str, tmp_path: Path) -> None:
    make, build, shape = CASES[name]
    path = make(tmp_path / f"{name}.onnx", seed=0)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    x = _image_batch(shape)
    np.testing.assert_allclose(_ort_run(path, x), _torch_run(build(), x), rtol=0, atol=ATOL)


def test_efficientnet_lite0_has_its_size_and_exports(tmp_path: Path) -> None:
    with seeded(0):
        module = randomize_norms(EfficientNetLite0(), 0).eval()
    assert 4.6e6 < sum(p.numel() for p in module.parameters()) < 4.7e6  # 4.65 M published
    path = export_onnx(
        module,
        (torch.zeros(1, 3, 64, 64),),
        tmp_path / "e.onnx",
        input_names=["input"],
        output_names=["logits"],
    )
    graph = onnx.load(str(path)).graph
    kernels = Counter(
        tuple(onnx.helper.get_node_attr_value(n, "kernel_shape"))
        for n in graph.node
        if n.op_type == "Conv" and onnx.helper.get_node_attr_value(n, "group") > 1
    )
    assert kernels == {(3, 3): 7, (5, 5): 9}
    assert _op_counts(path)["Add"] == 9  # shortcuts: repeats after the first of each stage
    x = _image_batch((1, 3, 64, 64))
    np.testing.assert_allclose(_ort_run(path, x), _torch_run(module, x), rtol=0, atol=ATOL)


def test_convbnrelu_structure(tmp_path: Path) -> None:
    path = make_convbnrelu_onnx(tmp_path / "m.onnx")
    ops = _op_counts(path)
    se_ops = {"GlobalAveragePool", "Sigmoid", "Mul"}
    assert {"BatchNormalization", "Add", "Concat", "Gemm"} | se_ops <= set(ops), ops
    graph = onnx.load(str(path)).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    groups = [
        (onnx.helper.get_node_attr_value(node, "group"), shapes[node.input[1]][0])
        for node in graph.node
        if node.op_type == "Conv" and any(a.name == "group" for a in node.attribute)
    ]
    assert [(g, c) for g, c in groups if g > 1] == [(16, 16)]


def test_batchnorm_statistics_are_randomized_by_seed() -> None:
    bn0 = ConvBnReluNet(seed=0).stem[1]
    bn1 = ConvBnReluNet(seed=1).stem[1]
    assert not torch.allclose(bn0.running_var, torch.ones_like(bn0.running_var))
    assert not torch.allclose(bn0.running_mean, bn1.running_mean)
    torch.testing.assert_close(ConvBnReluNet(seed=0).stem[1].running_mean, bn0.running_mean)


def test_tiny_transformer_structure(tmp_path: Path) -> None:
    ops = _op_counts(make_tiny_transformer_onnx(tmp_path / "m.onnx"))
    assert ops["MatMul"] >= 4 and ops["Softmax"] == 2 and ops["LayerNormalization"] == 5


def _identical_initializer_groups(path: Path) -> list[list[str]]:
    groups: dict[tuple, list[str]] = {}
    for init in onnx.load(str(path)).graph.initializer:
        array = onnx.numpy_helper.to_array(init)
        groups.setdefault((array.dtype.str, array.shape, array.tobytes()), []).append(init.name)
    return sorted(names for names in groups.values() if len(names) > 1)


def test_tied_transformer_stores_the_tied_weight_twice(tmp_path: Path) -> None:
    untied = make_tiny_transformer_onnx(tmp_path / "untied.onnx")
    tied = make_tiny_transformer_onnx(tmp_path / "tied.onnx", tie_weights=True)
    assert _identical_initializer_groups(untied) == []
    assert _identical_initializer_groups(tied) == [["embed", "head.weight"]]
    x = _image_batch((2, 16, 32))
    reference = _torch_run(TinyTransformer(tie_weights=True, seed=0), x)
    np.testing.assert_allclose(_ort_run(tied, x), reference, rtol=0, atol=ATOL)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_if_model_matches_torch_in_both_branches(sign: float, tmp_path: Path) -> None:
    path = make_if_model_onnx(tmp_path / "if.onnx")
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    (if_node,) = [node for node in model.graph.node if node.op_type == "If"]
    for branch in if_node.attribute:
        assert {init.name.split(".")[-1] for init in branch.g.initializer} == {"weight", "bias"}
    x = sign * (np.abs(_image_batch((2, 3, 16, 16))) + 0.1).astype(np.float32)
    np.testing.assert_allclose(_ort_run(path, x), _torch_run(IfModel(seed=0), x), rtol=0, atol=ATOL)


def test_mobilenet_v2_has_torchvision_parameter_layout() -> None:
    state = MobileNetV2().state_dict()
    assert len(state) == 314
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 3_504_872
    assert state["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert state["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert state["classifier.1.weight"].shape == (1000, 1280)
