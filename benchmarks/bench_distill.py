"""What `distill` adds: each pipeline without and with it, measured out of sample.

The machinery of `bench_generalization` (same calibration crops, same evaluation sets, same
interleaved latency measurement): 1024 calibration crops of `CALIBRATION_PHOTOS`; agreement
with the fp32 model (top-1 of the logits and their cosine) on 500 new crops of those photos
and on 500 crops of `OTHER_PHOTOS`, photos no calibration crop comes from; speed-up over fp32
(interleaved, batch 1, 2 threads); the optimize wall time and the peak resident memory of its
passes. `distill` trains on the calibration samples the passes are given (the tool keeps its
own holdout aside) and picks its best epoch on a part of them.

    python -m benchmarks.bench_distill
    python -m benchmarks.bench_distill --models mobilenet_v2 --pipelines quant \\
        --calib-samples 64 --eval-samples 32 --runs 20 --no-results --out /tmp/d   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import bench_generalization as gen
from benchmarks.results_file import write_section

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "distill"
BEGIN, END = "<!-- bench_distill:begin -->", "<!-- bench_distill:end -->"
BASES = ("quant", "share{target_ratio=6}", "prune{ratio=0.3},quant")
DISTILL = "distill"
EFFICIENTNET_BASES = ("quant",)


def pipelines_for(model: str, bases: list[str]) -> list[str]:
    chosen = bases if model == "mobilenet_v2" else [b for b in bases if b in EFFICIENTNET_BASES]
    return [text for base in chosen for text in (base, f"{base},{DISTILL}")]


TRANSFORMER_PIPELINES = ("quant", "quant,distill", "share{bits=4}", "share{bits=4},distill")


def transformer_rows(tmp: Path, args) -> list[gen.Row]:
    """The small transformer of the test zoo (random weights, input N x 16 x 32): calibrated
    on standard normal sequences, measured on new ones and on sequences drawn wider and off
    centre (1.5 x N(0, 1) + 0.3), which no calibration sample resembles as closely."""
    import numpy as np

    from onnxopt.api import optimize, validate
    from tests.zoo import make_tiny_transformer_onnx

    fp32 = make_tiny_transformer_onnx(tmp / "transformer.onnx", seed=0)
    rng = np.random.default_rng(21)
    sets = {"calib": rng.standard_normal((args.calib_samples, 16, 32)),
            "new_crops": rng.standard_normal((args.eval_samples, 16, 32)),
            "other_photos": 1.5 * rng.standard_normal((args.eval_samples, 16, 32)) + 0.3}
    paths = {}
    for name, array in sets.items():
        paths[name] = tmp / f"transformer_{name}.npz"
        np.savez(paths[name], input=array.astype(np.float32))
    rows = []
    for index, text in enumerate(TRANSFORMER_PIPELINES):
        row, out = gen.Row("transformer", text), tmp / f"transformer_{index}.onnx"
        began = time.perf_counter()
        result = optimize(fp32, out, passes=text, calib=paths["calib"], seed=gen.SEED)
        row.optimize_seconds = time.perf_counter() - began
        row.passes = gen.pass_steps(result.report)
        row.status = gen.pass_status(row.passes)
        row.peak_rss_mb = max(p.peak_rss_mb for p in result.report.passes)
        for name in ("new_crops", "other_photos"):
            fidelity = validate(fp32, out, paths[name])
            row.agreement[name] = {"top1": None, "cosine": fidelity.worst("cosine"),
                                   "samples": fidelity.samples}
        rows.append(row)
    return rows


def table(rows: list[gen.Row]) -> str:
    lines = [
        "| pipeline | status | new crops top-1 | new crops cosine | other photos top-1 "
        "| other photos cosine | speed-up | optimize time | peak RSS |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| `{r.pipeline}` | {r.error} |" + " |" * 7)
            continue
        a = r.agreement
        cells = [
            f"`{r.pipeline}`",
            r.status,
            gen._pct(a["new_crops"]["top1"]),
            _cosine(a["new_crops"]["cosine"]),
            gen._pct(a["other_photos"]["top1"]),
            _cosine(a["other_photos"]["cosine"]),
            "" if r.speedup is None else f"{r.speedup:.2f}x",
            f"{r.optimize_seconds / 60:.1f} min",
            "" if r.peak_rss_mb is None else f"{r.peak_rss_mb / 1024:.2f} GB",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cosine(value: float | None) -> str:
    """Four decimals; six above 0.999, where the transformer's rows differ."""
    if value is None or value < 0.999:
        return gen._cos(value)
    return f"{value:.6f}"


def section(args, body: str) -> str:
    return f"""## distill: knowledge distillation from the fp32 model, out of sample

`python -m benchmarks.bench_distill`. Each pipeline without and with `distill` (default
options: at most 16 epochs and 600 s of training, Adam 5e-4 (relative; share codebooks 2e-5),
batch 16, KL at T=2 on the logits plus normalized MSE on 4 intermediate tensors both graphs
compute, each student channel paired with the teacher channel it tracks; the epoch with the
best early-stopping cosine wins), through `onnxopt.api.optimize(..., calib=calib.npz, seed=0)`.
calib.npz: {args.calib_samples} crops of
{len(gen.CALIBRATION_PHOTOS)} photos (seed {gen.CALIB_SEED}); the tool holds 20 % of them out
for its own fidelity check, `distill` keeps 15 % of the rest for early stopping and trains on
the others. Agreement with the fp32 model on {args.eval_samples} **new crops** of the
calibration photos (seed {gen.NEW_SEED}) and {args.eval_samples} crops of **other photos**
({", ".join(gen.OTHER_PHOTOS)}; seed {gen.OTHER_SEED}), which no calibration crop comes from.
Speed-up: fp32 latency over the model's, interleaved in one process, batch 1, 2 threads,
{args.runs} rounds. Optimize time: wall time of the whole pipeline with its checks; peak RSS:
the largest peak resident memory of its passes. 2 CPU cores. EfficientNet-Lite0 has random
weights (see bench_generalization) and runs with `min_cosine=0`. The small transformer
(random weights, `transformer_rows` in the script) is calibrated on standard normal sequences
and measured on new ones ("new crops" column) and on wider, shifted ones ("other photos"
column); its output has no class axis (cosine only).

{body}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=gen.MODELS, default=list(gen.MODELS),
                        help="none: only the transformer rows")
    parser.add_argument("--pipelines", nargs="+", default=list(BASES),
                        help="base pipelines; each also runs with ,distill")
    parser.add_argument("--calib-samples", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument("--no-transformer", dest="transformer", action="store_false")
    parser.add_argument("--keep-others", action="store_true",
                        help="the table keeps the rows not run now (other models, other "
                             "pipelines) from --out's results.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    gen.check_disjoint(args.calib_samples, args.eval_samples)
    bases = list(args.pipelines)
    # rows not re-run keep their values from the last run (the table covers every model)
    results = _load(args.out) if args.keep_others else {}
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as name:
        for model in args.models:
            args.pipelines, args.audit = pipelines_for(model, bases), False
            results[model] = _merged(results.get(model, []),
                                     gen.measure_model(model, Path(name), args))
            _save(results, args.out)
        if args.transformer:
            results["transformer"] = _merged(results.get("transformer", []),
                                             transformer_rows(Path(name), args))
            _save(results, args.out)
    titles = {**gen.TITLES, "transformer": "Small transformer (test zoo, random weights)"}
    body = "\n\n".join(f"### {titles[m]}\n\n{table(rows)}" for m, rows in results.items())
    if not args.no_results:
        write_section(BEGIN, END, section(args, body))
    print(body)


def _merged(old: list[gen.Row], new: list[gen.Row]) -> list[gen.Row]:
    """`old` with each row of `new` in place of the old row of its pipeline (new ones last)."""
    fresh = {row.pipeline: row for row in new}
    kept = [fresh.pop(row.pipeline, row) for row in old]
    return kept + list(fresh.values())


def _load(out: Path) -> dict[str, list[gen.Row]]:
    path = out / "results.json"
    if not path.exists():
        return {}
    saved = json.loads(path.read_text())
    return {model: [gen.Row(**row) for row in rows] for model, rows in saved.items()}


def _save(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {m: [asdict(r) for r in rs] for m, rs in results.items()}
    (out / "results.json").write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
