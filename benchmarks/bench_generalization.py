"""Does each pass's fidelity hold on data it did not fit?

For MobileNetV2 (torchvision ImageNet weights) and the EfficientNet-Lite0-shaped network (random
weights, `benchmarks/efficientnet_lite.py`), each pipeline in `PIPELINES` runs through
`onnxopt.api.optimize` with 1024 calibration crops of `CALIBRATION_PHOTOS` (seed 11). Agreement
with the fp32 model (top-1 and cosine of the logits, `onnxopt.api.validate`) is then measured on
three sets:

- in-sample: the first 256 calibration crops that every pass fitted on (outside the seeded
  holdout that `optimize` keeps from --calib to measure on; labelled as such);
- new crops: 500 further crops of the calibration photos (seed 12);
- other photos: 500 crops of `OTHER_PHOTOS` (seed 13), photos no calibration crop comes from;

beside what the tool itself reports (`report.fidelity`, what `onnxopt optimize` prints) and what
that was measured on. Also recorded: each pass's status (changed / rolled back and why), the
optimize wall time, file size over fp32's and the latency speed-up over fp32 (interleaved,
batch 1, 2 threads, ORT CPU). Writes `benchmarks/out/generalization/results.json` and the
`bench_generalization` section of `benchmarks/RESULTS.md`.

    python -m benchmarks.bench_generalization
    python -m benchmarks.bench_generalization --models mobilenet_v2 --pipelines quant \\
        --calib-samples 64 --eval-samples 32 --runs 20 --no-results --out /tmp/gen   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from benchmarks.imagenet_data import (
    CALIBRATION_PHOTOS,
    OTHER_PHOTOS,
    load_photo,
    photo_crops,
    photo_names,
)
from benchmarks.results_file import write_section
from onnxopt.api import benchmark, optimize, validate
from onnxopt.data.sources import open_data
from onnxopt.errors import OnnxoptError, PassCrashed
from onnxopt.infra.pipeline import Pipeline, PipelineStep, parse_pipeline

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "generalization"
BEGIN, END = "<!-- bench_generalization:begin -->", "<!-- bench_generalization:end -->"
PIPELINES = ("quant", "share{target_ratio=6}", "prune{ratio=0.3}", "prune{ratio=0.3},quant")
AUDIT = (
    "quant{equalize=false,rounding=nearest}",
    "quant{bias_correction=true}",
    "quant{target_top1=0.97}",
    "share{bits=4,data_aware=false}",
    "share{bits=4}",
    "prune{ratio=0.3,augment=false}",
    "prune{ratio=0.3,criterion=l1}",
)
"""MobileNetV2 only: each fitted step of a pass on or off, so the gap between in-sample and
out-of-sample agreement can be pinned on a step (quant: ranges only vs + equalization and GPTQ,
+ bias correction, + the fallback search; share: plain vs data-aware codebooks, and the bit
allocation of target_ratio above; prune: the refit without blended samples, and a data-free
channel ranking)."""
MODELS = ("mobilenet_v2", "efficientnet_lite0")
UNGATED_MODELS = ("efficientnet_lite0",)
TITLES = {"mobilenet_v2": "MobileNetV2", "efficientnet_lite0": "EfficientNet-Lite0"}
CALIB_SEED, NEW_SEED, OTHER_SEED = 11, 12, 13
SEED = 0
IN_SAMPLE = 256
"""In-sample agreement: on the first calibration crops the passes fit on (prune fits on 256)."""
EVAL_SETS = ("in_sample", "new_crops", "other_photos")


@dataclass
class Row:
    model: str
    pipeline: str
    status: str = ""
    passes: list[dict] = field(default_factory=list)
    tool: dict = field(default_factory=dict)  # top1, cosine, samples, on, in_sample
    agreement: dict = field(default_factory=dict)  # set -> {top1, cosine, samples}
    speedup: float | None = None
    size_ratio: float | None = None
    optimize_seconds: float = 0.0
    peak_rss_mb: float | None = None
    error: str = ""


def export(model: str, path: Path) -> Path:
    if model == "mobilenet_v2":
        from benchmarks.mobilenet_v2 import export_mobilenet_v2

        return export_mobilenet_v2(path)
    from benchmarks.efficientnet_lite import export_efficientnet_lite0

    return export_efficientnet_lite0(path)


def check_disjoint(calib_n: int, eval_n: int) -> None:
    """Raise unless no other-photo crop comes from a photo (by name or by pixels) that any
    calibration or new crop comes from."""
    seen = set(photo_names(max(calib_n, eval_n), photos=CALIBRATION_PHOTOS))
    other = set(photo_names(eval_n, photos=OTHER_PHOTOS))
    if seen & other:
        raise RuntimeError(f"photos in both sets: {sorted(seen & other)}")

    def digest(name: str) -> str:
        return hashlib.sha256(load_photo(name).tobytes()).hexdigest()

    if {digest(n) for n in seen} & {digest(n) for n in other}:
        raise RuntimeError("a photo of OTHER_PHOTOS has the pixels of a calibration photo")


def fitted_rows(calib: Path, fp32: Path, samples: int) -> tuple[np.ndarray, str]:
    """Positions of the calibration samples the passes fit on, and the tool's note on its split.

    Where the tool holds a seeded share of --calib out (`onnxopt.data.holdout`), the same split is
    recomputed here (`optimize` checks its note against the report's); otherwise all rows.
    """
    try:
        from onnxopt.data.holdout import split_holdout
    except ImportError:  # a tool without a holdout fits on every calibration sample
        return np.arange(samples), ""
    split = split_holdout(open_data(calib, onnx.load(str(fp32))), seed=SEED)
    rows = getattr(split.fit, "rows", None)
    if split.in_sample or rows is None:
        return np.arange(samples), split.note
    return np.asarray(rows), split.note


def write_sets(folder: Path, fp32: Path, input_name: str, args) -> tuple[dict[str, Path], str]:
    """calib.npz plus one npz per evaluation set (keyed by the model's input name), and the
    note of the tool's holdout split that the in-sample set avoids."""
    folder.mkdir(parents=True, exist_ok=True)
    calib = photo_crops(args.calib_samples, seed=CALIB_SEED, photos=CALIBRATION_PHOTOS)
    paths = {"calib": folder / "calib.npz"}
    np.savez(paths["calib"], **{input_name: calib})
    rows, note = fitted_rows(paths["calib"], fp32, len(calib))
    arrays = {
        "in_sample": calib[rows[:IN_SAMPLE]],
        "new_crops": photo_crops(args.eval_samples, seed=NEW_SEED, photos=CALIBRATION_PHOTOS),
        "other_photos": photo_crops(args.eval_samples, seed=OTHER_SEED, photos=OTHER_PHOTOS),
    }
    for name, array in arrays.items():
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], **{input_name: array})
    return paths, note


def tool_reports(report) -> dict:
    """What `onnxopt optimize` reports about its output and what that was measured on; reads
    `fidelity_on`/`fidelity_in_sample` where the report has them, else infers them."""
    fidelity = report.fidelity or {}
    outputs = fidelity.get("outputs") or []
    top1 = [o["top1"] for o in outputs if o.get("top1") is not None]
    cosine = [o["cosine"] for o in outputs if o.get("cosine") is not None]
    on = getattr(report, "fidelity_on", None)
    if not on:
        data = fidelity.get("data") or report.validation
        on = f"{fidelity.get('samples', '?')} samples of {data}"
    in_sample = getattr(report, "fidelity_in_sample", None)
    if in_sample is None:  # before the report said: the gate data was the calibration data
        in_sample = report.calibration is not None and report.validation == report.calibration
    return {
        "top1": min(top1) if top1 else None,
        "cosine": min(cosine) if cosine else None,
        "samples": fidelity.get("samples"),
        "on": str(on),
        "in_sample": bool(in_sample),
    }


def pipeline_for(model: str, text: str) -> str:
    """The pipeline as run on `model`: EfficientNet-Lite0's random-weight logits carry too weak
    a signal for the default 0.9 output-cosine gates (bench_quant runs it the same way), so
    there every step that has `min_cosine` gets 0 and the table measures what the passes do."""
    if model not in UNGATED_MODELS:
        return text
    steps = [
        PipelineStep(step.name, dataclasses.replace(step.options, min_cosine=0.0))
        if any(f.name == "min_cosine" for f in dataclasses.fields(step.options))
        else step
        for step in parse_pipeline(text).steps
    ]
    return Pipeline(tuple(steps)).to_text()


def run_pipeline(model: str, fp32: Path, text: str, out: Path, sets: dict, split: str) -> Row:
    row = Row(model, text)
    start = time.perf_counter()
    try:
        passes = pipeline_for(model, text)
        result = optimize(fp32, out, passes=passes, calib=sets["calib"], seed=SEED)
    except (OnnxoptError, PassCrashed) as exc:
        row.error = row.status = f"failed: {exc}"
        log.warning("%s %s: %s", model, text, row.status)
        return row
    row.optimize_seconds = time.perf_counter() - start
    row.passes = pass_steps(result.report)
    row.status = pass_status(row.passes)
    peaks = [p.peak_rss_mb for p in result.report.passes if p.peak_rss_mb is not None]
    row.peak_rss_mb = max(peaks, default=None)
    row.tool = tool_reports(result.report)
    if split and row.tool["on"] != split:  # the in-sample set may then hold held-out crops
        log.warning("the tool's split (%s) is not the one assumed (%s)", row.tool["on"], split)
        row.tool["split_mismatch"] = split
    for name in EVAL_SETS:
        fidelity = validate(fp32, out, sets[name])
        row.agreement[name] = {
            "top1": fidelity.worst("top1"),
            "cosine": fidelity.worst("cosine"),
            "samples": fidelity.samples,
        }
    log.info("%s %s: %s; tool %s; agreement %s", model, text, row.status, row.tool, row.agreement)
    return row


def pass_steps(report) -> list[dict]:
    return [{"step": p.step, "status": p.status, "reason": p.reason, "skipped": p.skipped}
            for p in report.passes]


def pass_status(passes: list[dict]) -> str:
    """"changed", or each step's status; a step that changed nothing with its reason (a
    pass's last skipped line is the one that decided: e.g. why distill kept its input)."""
    if all(p["status"] == "changed" for p in passes):
        return "changed"
    return "; ".join(f"{p['step']} {p['status']}{_why(p)}" for p in passes)


def _why(step: dict) -> str:
    if step["status"] == "changed":
        return ""
    reason = step.get("reason") or (step.get("skipped") or [""])[-1]
    return f" ({reason})" if reason else ""


def measure_model(model: str, tmp: Path, args) -> list[Row]:
    fp32 = export(model, tmp / f"{model}.onnx")
    input_name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name
    sets, split = write_sets(tmp / f"{model}_data", fp32, input_name, args)
    rows, paths = [], []
    audit = AUDIT if model == "mobilenet_v2" and args.audit else ()
    for index, text in enumerate((*args.pipelines, *audit)):
        out = tmp / f"{model}_{index}.onnx"
        row = run_pipeline(model, fp32, text, out, sets, split)
        rows.append(row)
        if not row.error:
            paths.append((row, out))
    if paths:
        feed = {input_name: photo_crops(1, seed=NEW_SEED, photos=CALIBRATION_PHOTOS)}
        bench = benchmark(
            [fp32, *(p for _, p in paths)], threads=2, runs=args.runs, memory=False, data=[feed]
        )
        base = bench.models[0]
        for (row, _), result in zip(paths, bench.models[1:], strict=True):
            row.speedup = 1.0 / result.ratio
            row.size_ratio = result.file_bytes / base.file_bytes
    return rows


# --- report -------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def _cos(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| pipeline | status | tool reports: top-1 / cosine (measured on) | in-sample top-1 "
        "| new crops top-1 | new crops cosine | other photos top-1 | other photos cosine "
        "| speed-up | size ratio | optimize time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in rows:
        if r.error:
            lines.append(f"| `{r.pipeline}` | {r.error} |" + " |" * 9)
            continue
        for p in r.passes:
            if p["status"] == "rolled back":
                notes.append(f"`{r.pipeline}`: `{p['step']}` rolled back: {p['reason']}")
        t, a = r.tool, r.agreement
        label = t["on"] + (", in-sample" if t["in_sample"] else "")
        cells = [
            f"`{r.pipeline}`",
            r.status,
            f"{_pct(t['top1'])} / {_cos(t['cosine'])} ({label})",
            _pct(a["in_sample"]["top1"]),
            _pct(a["new_crops"]["top1"]),
            _cos(a["new_crops"]["cosine"]),
            _pct(a["other_photos"]["top1"]),
            _cos(a["other_photos"]["cosine"]),
            "" if r.speedup is None else f"{r.speedup:.2f}x",
            "" if r.size_ratio is None else f"{r.size_ratio:.3f}",
            f"{r.optimize_seconds:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def section(args, body: str) -> str:
    in_sample = min(IN_SAMPLE, args.calib_samples)
    models = ", ".join(TITLES[m] for m in args.models)
    return f"""## generalization: fidelity on data the passes did not fit

`python -m benchmarks.bench_generalization` (models: {models}). Every pipeline runs through
`onnxopt.api.optimize(..., calib=calib.npz, seed=0)`, options otherwise default.
calib.npz: {args.calib_samples} crops of {len(CALIBRATION_PHOTOS)} photos
({", ".join(CALIBRATION_PHOTOS)}; crop seed {CALIB_SEED}). Agreement with the fp32 model (top-1
of the logits, their cosine) on three sets: **in-sample**, the first {in_sample} calibration
crops that the passes fitted on (outside the seeded holdout `optimize` keeps from calib.npz;
the script recomputes that split and checks it against the report); **new crops**,
{args.eval_samples} further crops of the same photos (seed {NEW_SEED}); **other photos**,
{args.eval_samples} crops of {len(OTHER_PHOTOS)} photos that no calibration crop comes from
({", ".join(OTHER_PHOTOS)}; seed {OTHER_SEED}; the script checks that the two sets share no
photo, by name and by pixels). **Tool reports**: the fidelity `onnxopt optimize` prints for its
output model (`report.fidelity`, worst output) and what the tool says it measured it on; a
holdout of calib.npz is crops of the calibration photos, like "new crops"; "in-sample" marks
a number measured on data the passes fitted on. Status: passes the tool's gate rolled back
(reasons under the table); such a row still measures the model the tool wrote. Speed-up: fp32
latency over the model's, interleaved in one process, batch 1, 2 threads, {args.runs} rounds;
size ratio: file size over fp32's; optimize time: wall time of `optimize` with its checks.
Below the main rows, MobileNetV2 has audit rows that switch one fitted step on or off each
(`AUDIT` in the script). EfficientNet-Lite0 has random weights (BatchNorm statistics from 64
crops of `PHOTOS`, seed 7, some of them of "other" photos: that builds the float network, no
pass fits on it), so its rows measure fidelity to that network only; its logits are too weak
a signal for the default 0.9 output-cosine gates, so there every step runs with
`min_cosine=0` (as in bench_quant).

{body}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), help="pipeline texts")
    parser.add_argument("--calib-samples", type=int, default=1024, help="calibration crops")
    parser.add_argument("--eval-samples", type=int, default=500, help="crops per evaluation set")
    parser.add_argument("--runs", type=int, default=100, help="timed rounds per model")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for results.json")
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument(
        "--no-audit", dest="audit", action="store_false", help="skip the AUDIT rows"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_disjoint(args.calib_samples, args.eval_samples)
    results: dict[str, list[Row]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-generalization-") as name:
        for model in args.models:
            results[model] = measure_model(model, Path(name), args)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    payload = {"settings": settings, **{m: [asdict(r) for r in rs] for m, rs in results.items()}}
    (args.out / "results.json").write_text(json.dumps(payload, indent=1))
    body = "\n\n".join(f"### {TITLES[m]}\n\n{table(rows)}" for m, rows in results.items())
    if not args.no_results:
        write_section(BEGIN, END, section(args, body))
    print(body)


if __name__ == "__main__":
    main()
