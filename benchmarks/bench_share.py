"""Benchmark of the `share` pass on torchvision's ImageNet MobileNetV2.

Each configuration runs through `onnxopt.api.optimize` with calibration crops of
`CALIBRATION_PHOTOS` (seed 11); `share` never rolls back here (min_cosine=0), so the table shows
what each costs. Fidelity: top-1 agreement and logit cosine with the fp32 model on new crops of
the calibration photos (seed 12) and on crops of `OTHER_PHOTOS`, photos no calibration crop
comes from (seed 13). Size: the file on disk and its gzip size, as ratios to the fp32 file.
Session load time and latency: ratios to fp32 timed interleaved in one process (batch 1,
2 threads, ORT CPU).

    python -m benchmarks.bench_share              # writes the share section of RESULTS.md
    python -m benchmarks.bench_share --quick      # fewer crops, for a smoke run (no RESULTS.md)
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.results_file import write_section as write_results_section
from onnxopt import api
from onnxopt.analyses.stats import bench_facts
from onnxopt.data.holdout import HOLDOUT_FRACTION, MAX_HOLDOUT, MIN_HOLDOUT
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from onnxopt.runtime.session import make_session, session_options

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "share"
BEGIN, END = "<!-- bench_share:begin -->", "<!-- bench_share:end -->"
CALIB_SEED, NEW_SEED, OTHER_SEED = 11, 12, 13
"""Crop seeds: calibration crops and new crops of CALIBRATION_PHOTOS, crops of OTHER_PHOTOS (as
in bench_generalization)."""

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
    top1: float  # on new crops of the calibration photos
    cosine: float
    top1_other: float | None = None  # on crops of OTHER_PHOTOS
    cosine_other: float | None = None
    gates_on: str = ""  # what onnxopt measured its gates on (report.fidelity_on)
    latency_ratio: float = float("nan")
    load_ratio: float = float("nan")


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    session = make_session(str(path), options=session_options(threads=2))
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 50]})[0] for i in range(0, len(images), 50)]
    )


def agreement(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and the mean per-sample cosine of the logits."""
    cos = (
        np.sum(got * reference, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
    )
    return float(np.mean(got.argmax(1) == reference.argmax(1))), float(np.mean(cos))


def held_out(samples: int) -> int:
    """How many of `samples` calibration samples onnxopt's gates hold out (0: too few to split,
    the gates then measure in-sample); the rule of `onnxopt.holdout.split_holdout`."""
    wanted = min(max(round(HOLDOUT_FRACTION * samples), MIN_HOLDOUT), MAX_HOLDOUT)
    return wanted if samples - wanted >= wanted else 0


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
    from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, photo_crops
    from benchmarks.mobilenet_v2 import export_mobilenet_v2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 calibration, 64 evaluation crops")
    parser.add_argument("--only", nargs="*", help="config names to run")
    parser.add_argument(
        "--out", type=Path, help=f"folder for results.json ({OUT}; --quick: {OUT}-quick)"
    )
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    args = parser.parse_args()
    calib_n, val_n = (64, 64) if args.quick else (128, 300)
    args.out = args.out or (OUT.with_name(OUT.name + "-quick") if args.quick else OUT)
    if set(CALIBRATION_PHOTOS) & set(OTHER_PHOTOS):
        raise RuntimeError("CALIBRATION_PHOTOS and OTHER_PHOTOS share a photo")
    tmp = Path(tempfile.mkdtemp(prefix="bench-share-"))
    base = export_mobilenet_v2(tmp / "mobilenet_v2.onnx")
    np.savez(
        tmp / "calib.npz",
        input=photo_crops(calib_n, seed=CALIB_SEED, photos=CALIBRATION_PHOTOS),
    )
    images = photo_crops(val_n, seed=NEW_SEED, photos=CALIBRATION_PHOTOS)
    other = photo_crops(val_n, seed=OTHER_SEED, photos=OTHER_PHOTOS)
    reference, other_reference = logits(base, images), logits(base, other)
    rows, paths = [], []
    for name, pipeline in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        out = tmp / f"{len(rows)}.onnx"
        start = time.perf_counter()
        result = api.optimize(base, out, passes=pipeline, calib=tmp / "calib.npz")
        seconds = time.perf_counter() - start
        top1, cosine = agreement(reference, logits(out, images))
        top1_other, cosine_other = agreement(other_reference, logits(out, other))
        rows.append(
            Row(
                name,
                pipeline,
                seconds,
                out.stat().st_size,
                len(gzip.compress(out.read_bytes(), 6, mtime=0)),
                top1,
                cosine,
                top1_other,
                cosine_other,
                result.report.fidelity_on,
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
    settings = {"calib": calib_n, "eval": val_n, "quick": args.quick}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps({"settings": settings, "rows": [asdict(r) for r in rows]}, indent=1)
    )
    text = table(
        rows, base.stat().st_size, len(gzip.compress(base.read_bytes(), 6)), val_n, calib_n
    )
    if not (args.quick or args.no_results):
        write_section(text)
    print(text)


def table(rows: list[Row], base_size: int, base_gzip: int, val_n: int, calib_n: int) -> str:
    from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS

    kept = held_out(calib_n)
    gates = (
        f"hold out {kept} of the {calib_n} calibration crops and the passes fit on the other "
        f"{calib_n - kept}"
        if kept
        else f"measure in-sample on the {calib_n} calibration crops (too few to split)"
    )
    lines = [
        f"MobileNetV2 (torchvision ImageNet weights), fp32 file {base_size / 1e6:.2f} MB "
        f"(gzip {base_gzip / 1e6:.2f} MB); `python -m benchmarks.bench_share`. Calibration: "
        f"{calib_n} crops of the {len(CALIBRATION_PHOTOS)} calibration photos "
        f"({', '.join(CALIBRATION_PHOTOS)}; crop seed {CALIB_SEED}). Agreement with fp32 "
        f"(top-1 of the logits, their mean per-crop cosine) on two sets of {val_n} crops: "
        f"**new crops**, further crops of the same photos (seed {NEW_SEED}), and **other "
        f"photos**, crops of {len(OTHER_PHOTOS)} photos that no calibration crop comes from "
        f"({', '.join(OTHER_PHOTOS)}; seed {OTHER_SEED}). onnxopt's own gates (the output "
        "check after each pass: `share` has min_cosine=0 here and never rolls back, `prune` "
        "and `quant` keep their defaults) measure on a seeded holdout of the calibration "
        f"samples that no pass fits on (20 %, 32–256 samples): here they {gates}. Latency: the "
        "model's over fp32's, timed interleaved in one process (1.00x = the same, below 1 = "
        "faster); load time: median of 11 interleaved `InferenceSession` creations over "
        "fp32's (ONNX Runtime folds the codebook decoders there).",
        "",
        "| config | pipeline | file | smaller | gzip smaller | top-1 new crops "
        "| top-1 other photos | cosine new crops | cosine other photos | latency vs fp32 "
        "| load time vs fp32 | optimize time |",
        "|---|---|" + "---:|" * 10,
    ]
    for r in rows:
        other_top1 = "" if r.top1_other is None else f"{100 * r.top1_other:.1f} %"
        other_cos = "" if r.cosine_other is None else f"{r.cosine_other:.4f}"
        lines.append(
            f"| {r.name} | `{r.pipeline}` | {r.size / 1e6:.2f} MB | {base_size / r.size:.2f}x "
            f"| {base_gzip / r.gzip_size:.2f}x | {100 * r.top1:.1f} % | {other_top1} "
            f"| {r.cosine:.4f} | {other_cos} "
            f"| {r.latency_ratio:.2f}x | {r.load_ratio:.2f}x | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def write_section(text: str) -> None:
    write_results_section(BEGIN, END, f"## share: weight sharing\n\n{text}")


if __name__ == "__main__":
    main()
