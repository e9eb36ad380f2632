"""Benchmark of the `share` pass on torchvision's ImageNet MobileNetV2.

Each configuration runs through `onnxopt.api.optimize` with calibration crops of real photos
(seed 1); `share` never rolls back here (min_cosine=0), so the table shows what each costs.
Fidelity: top-1 agreement and logit cosine with the fp32 model on held-out crops (seed 2).
Size: the file on disk and its gzip size, as ratios to the fp32 file. Session load time and
latency: ratios to fp32 timed interleaved in one process (batch 1, 2 threads, ORT CPU).

    python -m benchmarks.bench_share              # writes the share section of RESULTS.md
    python -m benchmarks.bench_share --quick      # fewer crops, for a smoke run
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.results_file import write_section as write_results_section
from onnxopt import api
from onnxopt.analyses.stats import bench_facts
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from onnxopt.runtime.session import make_session, session_options

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- bench_share:begin -->", "<!-- bench_share:end -->"

NO_ROLLBACK = "min_cosine=0"
CONFIGS = {
    "weights only, 4 bits, per tensor": (
        f"share{{bits=4,data_aware=false,granularity=tensor,{NO_ROLLBACK}}}"
    ),
    "data-aware, 4 bits": f"share{{bits=4,{NO_ROLLBACK}}}",
    "data-aware, 8 bits": f"share{{bits=8,{NO_ROLLBACK}}}",
    "target_ratio=6": f"share{{target_ratio=6,{NO_ROLLBACK}}}",
    "quant (int8, reference)": "quant",
    "share 4 bits, quant": f"share{{bits=4,{NO_ROLLBACK}}},quant",
    "prune, share 4 bits, quant": f"prune,share{{bits=4,{NO_ROLLBACK}}},quant",
}


@dataclass
class Row:
    name: str
    pipeline: str
    seconds: float
    size: int
    gzip_size: int
    top1: float
    cosine: float
    latency_ratio: float = float("nan")
    load_ratio: float = float("nan")


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = make_session(str(path), options=session_options(threads=2))
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 50]})[0] for i in range(0, len(images), 50)]
    )


def load_ratios(base: Path, paths: list[Path], rounds: int = 11) -> list[float]:
    """Median session-creation time of each model over fp32's, timed interleaved: the
    machine's load drifts over the minutes a model-by-model timing takes."""
    times: dict[Path, list[float]] = {path: [] for path in (base, *paths)}
    for _ in range(rounds):
        for path, taken in times.items():
            start = time.perf_counter()
            make_session(str(path), options=session_options(threads=2))
            taken.append(time.perf_counter() - start)
    base_time = np.median(times[base])
    return [float(np.median(times[path]) / base_time) for path in paths]


def main() -> None:
    from benchmarks.imagenet_data import photo_crops
    from benchmarks.mobilenet_v2 import export_mobilenet_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", help="config names to run")
    args = parser.parse_args()
    calib_n, val_n = (32, 64) if args.quick else (128, 300)
    tmp = Path(tempfile.mkdtemp(prefix="bench-share-"))
    base = export_mobilenet_v2(tmp / "mobilenet_v2.onnx")
    np.savez(tmp / "calib.npz", input=photo_crops(calib_n, seed=1))
    images = photo_crops(val_n, seed=2)
    np.savez(tmp / "val.npz", input=images[:64])
    reference = logits(base, images)
    rows, paths = [], []
    for name, pipeline in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        out = tmp / f"{len(rows)}.onnx"
        start = time.perf_counter()
        api.optimize(base, out, passes=pipeline, calib=tmp / "calib.npz", val=tmp / "val.npz")
        seconds = time.perf_counter() - start
        got = logits(out, images)
        cos = (
            np.sum(got * reference, 1)
            / np.linalg.norm(got, axis=1)
            / np.linalg.norm(reference, axis=1)
        )
        rows.append(
            Row(
                name,
                pipeline,
                seconds,
                out.stat().st_size,
                len(gzip.compress(out.read_bytes(), 6, mtime=0)),
                float(np.mean(got.argmax(1) == reference.argmax(1))),
                float(np.mean(cos)),
            )
        )
        paths.append(out)
        print(rows[-1], flush=True)
    report = benchmark_models(
        [str(base), *map(str, paths)],
        settings=BenchSettings(threads=2, runs=60, memory=False),
        data=[{"input": images[:1]}],
        facts=bench_facts,
    )
    loads = load_ratios(base, paths)
    for row, bench, load in zip(rows, report.models[1:], loads, strict=True):
        row.latency_ratio = bench.ratio
        row.load_ratio = load
    write_section(
        table(rows, base.stat().st_size, len(gzip.compress(base.read_bytes(), 6)), val_n, calib_n)
    )


def table(rows: list[Row], base_size: int, base_gzip: int, val_n: int, calib_n: int) -> str:
    lines = [
        f"MobileNetV2 (torchvision ImageNet weights), fp32 file {base_size / 1e6:.2f} MB "
        f"(gzip {base_gzip / 1e6:.2f} MB); {calib_n} calibration crops, agreement on {val_n} "
        "held-out crops; `python -m benchmarks.bench_share`. Latency: the model's over fp32's, "
        "timed interleaved in one process (1.00x = the same, below 1 = faster); load time: "
        "median of 11 interleaved `InferenceSession` creations over fp32's (ONNX Runtime folds "
        "the codebook decoders there).",
        "",
        "| config | pipeline | file | smaller | gzip smaller | top-1 agreement | cosine "
        "| latency vs fp32 | load time vs fp32 | optimize time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | `{r.pipeline}` | {r.size / 1e6:.2f} MB | {base_size / r.size:.2f}x "
            f"| {base_gzip / r.gzip_size:.2f}x | {100 * r.top1:.1f} % | {r.cosine:.4f} "
            f"| {r.latency_ratio:.2f}x | {r.load_ratio:.2f}x | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    write_results_section(BEGIN, END, f"## share: weight sharing\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
