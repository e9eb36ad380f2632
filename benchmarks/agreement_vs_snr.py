"""How small must a model's output error be for a given top-1 agreement with fp32?

MobileNetV2 (ImageNet weights) on the crop sets of `bench_distill`: 500 new crops of the
calibration photos and 500 crops of other photos. For each set: the fp32 logits, then the
logits of onnxopt's `quant` output (calibrated on the 1024 calibration crops), and the top-1
agreement when the logits carry (a) int8's own error scaled up or down, (b) independent
Gaussian noise, at a range of signal-to-noise ratios (10 log10 of logit power over error power,
per sample). It says what an agreement target asks of the error: the SNR that int8 reaches,
against the SNR a target needs.

    python -m benchmarks.agreement_vs_snr
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, photo_crops
from benchmarks.results_file import write_section

BEGIN, END = "<!-- agreement_vs_snr:begin -->", "<!-- agreement_vs_snr:end -->"
LEVELS = (18, 20, 22, 24, 26, 28, 30, 32, 34, 38)
DRAWS = 10


def logits(model: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i : i + 25]})[0]
                           for i in range(0, len(images), 25)])


def snr_db(reference: np.ndarray, error: np.ndarray) -> float:
    return float(10 * np.log10((reference**2).sum() / (error**2).sum()))


def agreement(reference: np.ndarray, other: np.ndarray) -> float:
    return float((reference.argmax(1) == other.argmax(1)).mean())


def curves(fp32: np.ndarray, quant: np.ndarray, seed: int) -> dict[str, list[float]]:
    """Agreement at each of LEVELS: int8's error rescaled, and Gaussian noise."""
    error = quant - fp32
    base = snr_db(fp32, error)
    rng = np.random.default_rng(seed)
    power = (fp32**2).mean(axis=1, keepdims=True)
    scaled, gaussian = [], []
    for level in LEVELS:
        scaled.append(agreement(fp32, fp32 + error * 10 ** ((base - level) / 20)))
        sigma = np.sqrt(power / 10 ** (level / 10))
        gaussian.append(float(np.mean([agreement(fp32, fp32 + sigma * rng.standard_normal(
            fp32.shape)) for _ in range(DRAWS)])))
    return {"int8 error, rescaled": scaled, "Gaussian noise": gaussian}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib-samples", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    from benchmarks.mobilenet_v2 import export_mobilenet_v2
    from onnxopt.api import optimize

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = export_mobilenet_v2(folder / "fp32.onnx")
        calib = folder / "calib.npz"
        np.savez(calib, input=photo_crops(args.calib_samples, seed=11, photos=CALIBRATION_PHOTOS))
        quant = folder / "quant.onnx"
        optimize(fp32, quant, passes="quant", calib=calib, seed=0)
        sets = {"new crops": photo_crops(args.eval_samples, seed=12, photos=CALIBRATION_PHOTOS),
                "other photos": photo_crops(args.eval_samples, seed=13, photos=OTHER_PHOTOS)}
        lines = []
        for name, images in sets.items():
            reference, int8 = logits(fp32, images), logits(quant, images)
            lines.append((name, snr_db(reference, int8 - reference), agreement(reference, int8),
                          curves(reference, int8, seed=len(lines))))
    text = render(lines, args)
    print(text)
    if not args.no_results:
        write_section(BEGIN, END, text)


def render(lines, args) -> str:
    out = ["## Top-1 agreement against output error (MobileNetV2)", "",
           "`python -m benchmarks.agreement_vs_snr`. The logits of onnxopt's `quant` output "
           f"(calibrated on {args.calib_samples} crops of the calibration photos) against fp32's "
           f"on {args.eval_samples} new crops of those photos and {args.eval_samples} crops of "
           "other photos; then the agreement when fp32's logits carry int8's own error rescaled "
           "to each SNR, or independent Gaussian noise at it (mean of "
           f"{DRAWS} draws). SNR: 10 log10 of logit power over error power.", ""]
    for name, snr, top1, table in lines:
        out.append(f"**{name}**: int8 `quant` reaches {snr:.1f} dB and {100 * top1:.1f} % "
                   "top-1 agreement.")
        out.append("")
        out.append("| error | " + " | ".join(f"{level} dB" for level in LEVELS) + " |")
        out.append("|---|" + "---:|" * len(LEVELS))
        for kind, values in table.items():
            out.append(f"| {kind} | " + " | ".join(f"{100 * v:.1f} %" for v in values) + " |")
        out.append("")
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    main()
