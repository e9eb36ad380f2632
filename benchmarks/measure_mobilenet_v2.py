"""Measure torchvision's ImageNet MobileNetV2 with `onnxopt inspect`, `benchmark` and `validate`.

Run from the repository root: ``python -m benchmarks.measure_mobilenet_v2`` (needs the
``bench`` extras; see ``benchmarks/mobilenet_v2.py`` for the weights). Writes under
``benchmarks/out/mobilenet_v2/``:

- ``mobilenet_v2.onnx``: the fp32 export (BatchNormalization kept);
- ``mobilenet_v2.ort_basic.onnx``: the same model after ONNX Runtime's basic graph
  optimizations (constant folding, Conv+BN fusion), benchmarked against it;
- ``mobilenet_v2.w16.onnx``: every float weight rounded to float16 precision (stored as
  float32), a lossy candidate for `validate` to measure;
- ``val.npz``: 64 ImageNet-normalized photo crops; ``photos/``: the source photos as PNGs, read
  through onnxopt's image-folder reader with its ImageNet preprocessing;
- ``inspect.json``, ``bench.json``, ``bench.csv``, ``fidelity_*.json``.

It prints each command and its output, then checks the ~300 M MACs and ~3.5 M parameters that
torchvision reports for MobileNetV2 at 224x224 (within 2 %).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from PIL import Image

from benchmarks.imagenet_data import PHOTOS, load_photo, photo_crops
from benchmarks.mobilenet_v2 import export_mobilenet_v2

OUT = Path("benchmarks/out/mobilenet_v2")
EXPECTED_MACS = 300.8e6  # torchvision / ptflops at 224x224
EXPECTED_PARAMS = 3.505e6  # torchvision's parameter count
TOLERANCE = 0.02


def onnxopt(*args: str | Path, echo: bool = True) -> subprocess.CompletedProcess:
    """Run the onnxopt CLI, echoing the command and (unless `echo` is False) its output."""
    script = shutil.which("onnxopt")
    command = [script] if script else [sys.executable, "-m", "onnxopt"]
    shown = "onnxopt " + " ".join(shlex.quote(str(a)) for a in args)
    print(f"\n$ {shown}", flush=True)
    done = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, check=False)
    print(done.stdout if echo else f"({len(done.stdout)} characters of JSON)\n", end="")
    if done.stderr:
        print(done.stderr, end="", file=sys.stderr)
    print(f"(exit {done.returncode})", flush=True)
    return done


def ort_basic_copy(source: Path, target: Path) -> Path:
    """The model as ONNX Runtime's basic graph optimizations leave it."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def fp16_rounded_copy(source: Path, target: Path) -> Path:
    """The model with its float32 initializers rounded to the nearest float16 value."""
    model = onnx.load(source)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    onnx.save(model, target)
    return target


def write_inputs(out: Path, samples: int) -> tuple[Path, Path]:
    val = out / "val.npz"
    np.savez(val, input=photo_crops(samples, seed=0))
    photos = out / "photos"
    photos.mkdir(exist_ok=True)
    for name in PHOTOS:
        Image.fromarray(load_photo(name)).save(photos / f"{name}.png")
    return val, photos


def check(label: str, value: float, expected: float) -> bool:
    error = value / expected - 1
    ok = abs(error) <= TOLERANCE
    print(
        f"{label}: {value / 1e6:.2f} M (expected ~{expected / 1e6:.1f} M, {error:+.1%}) "
        f"{'OK' if ok else 'OUT OF RANGE'}"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    parser.add_argument("--runs", type=int, default=200, help="benchmark rounds")
    parser.add_argument("--samples", type=int, default=64, help="validation crops")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = export_mobilenet_v2(out / "mobilenet_v2.onnx")
    basic = ort_basic_copy(model, out / "mobilenet_v2.ort_basic.onnx")
    rounded = fp16_rounded_copy(model, out / "mobilenet_v2.w16.onnx")
    val, photos = write_inputs(out, args.samples)

    shape = "input:1x3x224x224"
    inspected = onnxopt("inspect", model, "--shape", shape, "--top", "8")
    summary = json.loads(onnxopt("inspect", model, "--shape", shape, "--json", echo=False).stdout)
    (out / "inspect.json").write_text(json.dumps(summary, indent=2) + "\n")
    onnxopt(
        "benchmark",
        model,
        basic,
        "--runs",
        args.runs,
        "--threads",
        "2",
        "--json",
        out / "bench.json",
        "--csv",
        out / "bench.csv",
    )
    onnxopt(
        "benchmark",
        model,
        basic,
        "--batch",
        "8",
        "--runs",
        max(10, args.runs // 8),
        "--threads",
        "2",
        "--no-memory",
    )
    gates = ["--min-cosine", "0.999", "--min-top1", "0.9"]
    validated = onnxopt(
        "validate", model, rounded, "--data", val, *gates, "--json", out / "fidelity_crops.json"
    )
    from_photos = onnxopt(
        "validate",
        model,
        rounded,
        "--data",
        photos,
        "--batch",
        "4",
        *gates,
        "--json",
        out / "fidelity_photos.json",
    )

    missed = onnxopt("validate", model, rounded, "--data", val, "--max-abs", "1e-6")  # exit 1

    print()
    ok = check("MACs", summary["macs"]["total"], EXPECTED_MACS)
    ok &= check("parameters", summary["params"], EXPECTED_PARAMS)
    ok &= inspected.returncode == validated.returncode == from_photos.returncode == 0
    ok &= missed.returncode == 1
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
