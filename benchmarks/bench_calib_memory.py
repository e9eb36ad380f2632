"""Peak memory of `onnxopt optimize --passes quant` as calibration data and feature maps grow.

Models: torchvision's ImageNet MobileNetV2 (224x224) calibrated on 256 and on 1024 photo crops,
and a DBNet-style text detector at 960x960 (a MobileNetV2 backbone with random weights, an FPN
neck merged at 1/4 scale and a transposed-conv head that gives a full-size probability map: the
shape of PaddleOCR's detectors) calibrated on 32 resized photos. Each run is a child process;
its wall time and peak RSS come from `/usr/bin/time`'s view of that child. The numbers before
the streaming change were measured with the same command on commit c303ec8.

    python -m benchmarks.bench_calib_memory            # writes its section of RESULTS.md
    python -m benchmarks.bench_calib_memory --out /tmp/bcm --no-write
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from benchmarks.imagenet_data import photo_crops
from benchmarks.mobilenet_v2 import export_mobilenet_v2
from benchmarks.results_file import write_section
from tests.zoo import MobileNetV2

BEGIN, END = "<!-- bench_calib_memory:begin -->", "<!-- bench_calib_memory:end -->"
DETECTOR_SIDE = 960
BEFORE_GB = {
    "MobileNetV2 224x224, 256 crops": 1.47,
    "MobileNetV2 224x224, 1024 crops": 1.57,
    "DBNet-style detector 960x960, 32 images": 6.61,
}
"""Peak RSS (GiB) of the same commands on commit c303ec8, before the probe sized its runs (the
detector then calibrated on 32 noisy resized scikit-image photos instead of photo crops)."""


class DBNetLike(nn.Module):
    """MobileNetV2 features tapped at 1/4, 1/8, 1/16 and 1/32, a top-down FPN, a head
    upsampling twice to a one-channel map at the input's size."""

    TAPS = (3, 6, 13, 18)
    CHANNELS = (24, 32, 96, 1280)

    def __init__(self) -> None:
        super().__init__()
        self.features = MobileNetV2().features
        self.lateral = nn.ModuleList(nn.Conv2d(c, 96, 1) for c in self.CHANNELS)
        self.smooth = nn.ModuleList(nn.Conv2d(96, 24, 3, padding=1) for _ in self.CHANNELS)
        self.head = nn.Sequential(
            nn.Conv2d(96, 24, 3, padding=1),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.ConvTranspose2d(24, 24, 2, 2),
            nn.BatchNorm2d(24),
            nn.ReLU(),
            nn.ConvTranspose2d(24, 1, 2, 2),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.TAPS:
                taps.append(x)
        maps = [conv(t) for conv, t in zip(self.lateral, taps, strict=True)]
        for i in range(len(maps) - 1, 0, -1):
            maps[i - 1] = maps[i - 1] + F.interpolate(maps[i], size=maps[i - 1].shape[2:])
        size = maps[0].shape[2:]
        merged = [F.interpolate(s(m), size=size) for s, m in zip(self.smooth, maps, strict=True)]
        return self.head(torch.cat(merged, 1))


def export_detector(path: Path) -> Path:
    torch.manual_seed(0)
    model = DBNetLike().eval()
    dynamic = {0: "n", 2: "h", 3: "w"}
    torch.onnx.export(
        model,
        torch.randn(1, 3, DETECTOR_SIDE, DETECTOR_SIDE),
        str(path),
        input_names=["x"],
        output_names=["maps"],
        dynamic_axes={"x": dynamic, "maps": dynamic},
        opset_version=17,
        dynamo=False,
    )
    return path


def detector_inputs(n: int) -> np.ndarray:
    """`n` photo crops resized to 960x960 (ImageNet-normalized, NCHW float32)."""
    crops = torch.from_numpy(photo_crops(n, seed=21, size=320))
    return F.interpolate(crops, size=(DETECTOR_SIDE, DETECTOR_SIDE), mode="bilinear").numpy()


def measure(model: Path, calib: Path, out: Path) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in GB, quant's row) of one `optimize --passes quant` child."""
    command = ["/usr/bin/time", "-f", "TIME %e %M", "onnxopt", "optimize", str(model)]
    command += ["--calib", str(calib), "--passes", "quant", "-o", str(out), "--force"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, kilobytes = re.search(r"TIME ([\d.]+) (\d+)", done.stderr).groups()
    row = next(line for line in done.stdout.splitlines() if line.startswith("quant "))
    return float(seconds), int(kilobytes) / 2**20, " ".join(row.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: temp)")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-calib-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    mobilenet = export_mobilenet_v2(work / "mobilenet_v2.onnx")
    detector = export_detector(work / "dbnet_like.onnx")
    cases = []
    for samples in (256, 1024):
        calib = work / f"crops_{samples}.npz"
        np.savez(calib, input=photo_crops(samples, seed=11))
        cases.append((f"MobileNetV2 224x224, {samples} crops", mobilenet, calib))
    calib = work / "detector_32.npz"
    np.savez(calib, x=detector_inputs(32))
    cases.append(("DBNet-style detector 960x960, 32 images", detector, calib))
    rows = [
        "| model, calibration | wall | peak RSS | before (c303ec8) | quant's row (fidelity: "
        "holdout of --calib; in-sample for the detector's 32 images, too few to hold 32 out) |"
    ]
    rows.append("|---|---:|---:|---:|---|")
    for name, model, data in cases:
        seconds, gigabytes, row = measure(model, data, work / f"{model.stem}.q.onnx")
        before = BEFORE_GB[name]
        rows.append(
            f"| {name} | {seconds:.0f} s | {gigabytes:.2f} GiB | {before:.2f} GiB | `{row}` |"
        )
        print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            "## Calibration memory (`python -m benchmarks.bench_calib_memory`)",
            "",
            f"2 cores, load average {load:.1f} at the end (other jobs shared the machine).",
            "",
            *rows,
        ]
    )
    if not args.no_write:
        write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
