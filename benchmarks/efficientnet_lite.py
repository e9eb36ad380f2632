"""EfficientNet-Lite0 as an ONNX model, for timing and memory benchmarks at its real size.

No EfficientNet-Lite0 weights ship on PyPI. The weights are random (seeded); the BatchNorm
statistics are then measured on real photo crops (and the logits centered on them), so every
layer sees activations of the scale a trained network has (normalized before each ReLU6), not
the blow-up or collapse of an unnormalized random network. Agreement numbers on it say how
faithfully a quantized model follows this float network, not anything about ImageNet accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.imagenet_data import photo_crops
from tests.zoo import export_onnx, randomize_norms, seeded
from tests.zoo.efficientnet import EfficientNetLite0

NORM_CROPS = 64
NORM_SEED = 7
"""BatchNorm statistics come from these crops (a seed the benchmarks' crops do not use)."""


def build_efficientnet_lite0(seed: int = 0) -> EfficientNetLite0:
    """Seeded random weights and norm affines, BatchNorm statistics from photo crops; eval mode."""
    with seeded(seed):
        model = EfficientNetLite0()
    randomize_norms(model, seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    crops = torch.from_numpy(photo_crops(NORM_CROPS, seed=NORM_SEED))
    with torch.no_grad():
        for batch in crops.split(16):
            model(batch)
        model.eval()
        # Random classifier rows all see the same positive mean feature: without centering,
        # one class wins on nearly every image and top-1 agreement would mean nothing.
        model.classifier[1].bias.sub_(model(crops).mean(0))
    return model


def export_efficientnet_lite0(path: str | Path, seed: int = 0) -> Path:
    """Input "input" Nx3x224x224 (dynamic N), output "logits"."""
    return export_onnx(
        build_efficientnet_lite0(seed),
        (torch.zeros(1, 3, 224, 224),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
