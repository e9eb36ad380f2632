"""Benchmark the `prune` pass on MobileNetV2 (ImageNet weights) and the digits CNN.

Run from the repository root (needs the ``bench`` extras): ``python -m benchmarks.bench_prune``.
For each ratio it prunes the model three ways and measures MACs, parameters, latency ratio to
the unpruned model (interleaved, one process, batch 1) and quality:

- ``magnitude``: ``prune{criterion=l1,reconstruct=false}``, plain L1 magnitude pruning;
- ``prune``: the defaults (``refit_error`` criterion, least-squares reconstruction);
- ``prune{scope=sensitivity}`` (ratios 0.2 and 0.3): the same MACs as ``prune``, allocated
  across groups by a measured probe of each group (``onnxopt/pruning/sensitivity.py``);
- ``prune,quant``: either pruning followed by the ``quant`` pass (when it is available).

Quality: for MobileNetV2, calibrated on crops of ``CALIBRATION_PHOTOS`` (seed 11), top-1
agreement with the unpruned model on new crops of those photos (seed 12) and on crops of
``OTHER_PHOTOS``, photos no calibration crop comes from (seed 13); for the digits CNN, accuracy
on the held-out digits with their real labels. Writes ``benchmarks/out/prune/results.json``,
the plot ``benchmarks/prune_quality_vs_macs.png`` and the ``prune`` section of
``benchmarks/RESULTS.md`` (between its markers, nothing else). ``--quick`` (ratio 0.3 only) and
``--no-results`` write neither RESULTS.md nor the plot (``--out`` picks the JSON's folder)::

    python -m benchmarks.bench_prune --quick --only mobilenet --calib 64 --val 64 --runs 20 \\
        --out /tmp/bench-prune   # smoke
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import logging
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxopt.passes.prune import PruneOptions, PrunePass

from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, photo_crops
from benchmarks.mobilenet_v2 import export_mobilenet_v2
from benchmarks.results_file import write_section as write_results_section
from onnxopt.analyses.macs import count_macs
from onnxopt.analyses.stats import bench_facts, parameter_count
from onnxopt.data.holdout import HOLDOUT_FRACTION, MAX_HOLDOUT, MIN_HOLDOUT
from onnxopt.data.sources import IterableSource, NpzSource, input_specs
from onnxopt.errors import OnnxoptError, OptionError, PassCrashed
from onnxopt.infra.manager import PassManager
from onnxopt.infra.pass_base import PassContext
from onnxopt.infra.pipeline import parse_pipeline
from onnxopt.infra.registry import get_pass_class
from onnxopt.pruning.reconstruct import MIN_HELD_OUT
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from onnxopt.runtime.session import make_session

OUT = Path("benchmarks/out/prune")
PLOT = Path("benchmarks/prune_quality_vs_macs.png")
BEGIN, END = "<!-- bench_prune:begin -->", "<!-- bench_prune:end -->"
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
QUANT_RATIOS = (0.1, 0.2, 0.3)
SENSITIVITY_RATIOS = (0.2, 0.3)
MAGNITUDE = {"criterion": "l1", "reconstruct": False}
SENSITIVITY = "prune{scope=sensitivity}"
CALIB_SEED, NEW_SEED, OTHER_SEED = 11, 12, 13
"""Crop seeds: calibration crops and new crops of CALIBRATION_PHOTOS, crops of OTHER_PHOTOS (as
in bench_generalization)."""


@dataclass
class Row:
    model: str
    config: str
    ratio: float
    macs: int
    params: int
    quality: float  # MobileNetV2: top-1 agreement on new crops of the calibration photos
    latency_ratio: float = 1.0
    seconds: float = 0.0
    quality_before_refit: float | None = None
    quality_other: float | None = None  # MobileNetV2: top-1 agreement on crops of OTHER_PHOTOS
    before_refit_on: str | None = None  # the samples `quality_before_refit` was measured on


@dataclass
class Case:
    """One model with its calibration data and quality metric."""

    name: str
    model: onnx.ModelProto
    calib: object
    quality_name: str
    quality: object  # ModelProto -> float
    batch: int = 1
    other_name: str = ""
    other: object = None  # ModelProto -> float, on data no calibration sample comes from
    data_key: str = ""  # what the calibration data are; --reuse only reuses models made on them


def batched(images: np.ndarray, size: int) -> list[dict[str, np.ndarray]]:
    return [{"input": images[i : i + size]} for i in range(0, len(images), size)]


def mobilenet_case(workdir: Path, calib_n: int, val_n: int) -> Case:
    if set(CALIBRATION_PHOTOS) & set(OTHER_PHOTOS):
        raise RuntimeError("CALIBRATION_PHOTOS and OTHER_PHOTOS share a photo")
    model = onnx.load(export_mobilenet_v2(workdir / "mobilenet_v2.onnx"))
    crops = photo_crops(calib_n, seed=CALIB_SEED, photos=CALIBRATION_PHOTOS)
    calib = IterableSource(batched(crops, 16), input_specs(model))
    new = _agreement(model, photo_crops(val_n, seed=NEW_SEED, photos=CALIBRATION_PHOTOS))
    other = _agreement(model, photo_crops(val_n, seed=OTHER_SEED, photos=OTHER_PHOTOS))
    key = f"{calib_n} crops of CALIBRATION_PHOTOS, seed {CALIB_SEED}"
    return Case(
        "MobileNetV2",
        model,
        calib,
        "top-1 new crops",
        new,
        other_name="top-1 other photos",
        other=other,
        data_key=key,
    )


def _agreement(model: onnx.ModelProto, images: np.ndarray):
    """Top-1 agreement of a candidate with `model` on `images` (ModelProto -> float)."""
    reference = _logits(model, images).argmax(1)

    def agreement(candidate: onnx.ModelProto) -> float:
        return float(np.mean(_logits(candidate, images).argmax(1) == reference))

    return agreement


def digits_case() -> Case:
    model = onnx.load("examples/digits_cnn.onnx")
    calib = NpzSource(Path("examples/digits_calib.npz"), input_specs(model), 32)
    val = np.load("examples/digits_val.npz")

    def accuracy(candidate: onnx.ModelProto) -> float:
        logits = make_session(candidate).run(None, {"input": val["input"]})[0]
        return float(np.mean(logits.argmax(1) == val["label"]))

    return Case(
        "digits CNN", model, calib, "accuracy", accuracy, batch=64, data_key="digits_calib.npz"
    )


def _logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = make_session(model)
    return np.concatenate([session.run(None, feed)[0] for feed in batched(images, 64)])


def run_prune(case: Case, ratio: float, **options) -> tuple[onnx.ModelProto, dict]:
    result = PrunePass(PruneOptions(ratio=ratio, **options)).run(
        copy.deepcopy(case.model), PassContext(calibration=case.calib)
    )
    before = (result.stats.get("before_reconstruction") or {}).get("top1_agreement")
    on = result.stats.get("fidelity_data")
    return result.model, {"quality_before_refit": before, "before_refit_on": on}


def run_pipeline(case: Case, text: str) -> tuple[onnx.ModelProto, dict]:
    manager = PassManager(parse_pipeline(text), calibration=case.calib)
    model, report = manager.run(case.model)
    for record in report.passes:
        logging.info("%s: %s %s", record.step, record.status, record.reason or "")
    return model, {}


def quant_available() -> bool:
    """Whether the `quant` pass exists (imported directly when not yet registered)."""
    try:
        get_pass_class("quant")
    except OptionError:
        try:
            importlib.import_module("onnxopt.passes.quant")
        except ImportError:
            return False
    return True


def variants(case: Case, ratios, quant_ratios, sensitivity_ratios):
    """(config, ratio, function returning (model, extra row fields)) for every model timed."""
    for ratio in ratios:
        yield "magnitude", ratio, lambda r=ratio: run_prune(case, r, **MAGNITUDE)
        yield "prune", ratio, lambda r=ratio: run_prune(case, r)
    for ratio in sensitivity_ratios:
        yield SENSITIVITY, ratio, lambda r=ratio: run_prune(case, r, scope="sensitivity")
    if quant_available():
        yield "quant", 0.0, lambda: run_pipeline(case, "quant")
        for ratio in quant_ratios:
            yield (
                "prune,quant",
                ratio,
                lambda r=ratio: run_pipeline(case, f"prune{{ratio={r}}},quant"),
            )
        for ratio in sensitivity_ratios:
            yield (
                f"{SENSITIVITY},quant",
                ratio,
                lambda r=ratio: run_pipeline(case, f"prune{{ratio={r},scope=sensitivity}},quant"),
            )


def produce(case: Case, config: str, ratio: float, make, reuse: bool, out: Path):
    """The variant's model and extra fields, from `out` when `reuse` and saved from the same
    calibration data, else computed."""
    tag = re.sub(r"[^a-z0-9]+", "_", f"{case.name.split()[0]}_{config}_{ratio:.1f}".lower())
    model_path, meta_path = out / f"{tag}.onnx", out / f"{tag}.json"
    if reuse and model_path.exists() and meta_path.exists():
        extra = json.loads(meta_path.read_text())
        if extra.get("calibration") == case.data_key:
            return onnx.load(model_path), extra
        logging.info("%s: made on other calibration data, computed again", model_path)
    start = time.perf_counter()
    model, extra = make()
    extra["seconds"] = time.perf_counter() - start
    extra["calibration"] = case.data_key
    onnx.save(model, model_path)
    meta_path.write_text(json.dumps(extra))
    return model, extra


def measure(case: Case, ratios, runs: int, reuse: bool, notes: list[str], out: Path):
    base = case.model
    rows = [Row(case.name, "unpruned", 0.0, count_macs(base).total, parameter_count(base), 1.0)]
    rows[0].quality = case.quality(base)
    if case.other is not None:
        rows[0].quality_other = case.other(base)
    models = [base]
    for config, ratio, make in variants(case, *ratios):
        try:
            model, extra = produce(case, config, ratio, make, reuse, out)
        except (OnnxoptError, PassCrashed) as exc:  # another pass's failure: note it, go on
            notes.append(f"{case.name} {config} at ratio {ratio}: {exc}")
            logging.warning("%s", notes[-1])
            continue
        row = Row(case.name, config, ratio, count_macs(model).total, parameter_count(model), 0.0)
        row.quality = case.quality(model)
        if case.other is not None:
            row.quality_other = case.other(model)
        row.seconds = extra["seconds"]
        row.quality_before_refit = extra.get("quality_before_refit")
        row.before_refit_on = extra.get("before_refit_on")
        rows.append(row)
        models.append(model)
        logging.info("%s", row)
    settings = BenchSettings(batch=case.batch, runs=runs, memory=False)
    report = benchmark_models(models, settings=settings, facts=bench_facts)
    for row, bench in zip(rows, report.models, strict=True):
        row.latency_ratio = bench.ratio
    return rows


def table(rows: list[Row], quality_name: str, other_name: str = "") -> str:
    """The model's table; `other_name`: a column for the quality on data no calibration sample
    comes from (empty where a row has no such number)."""
    base = rows[0]
    header = "config | ratio | MACs | MACs ratio | params | speed-up"
    quality = f"{quality_name} | {other_name}" if other_name else quality_name
    lines = [
        f"| {header} | {quality} | before refit | pass time |",
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if other_name else "") + "---:|---:|",
    ]
    for r in rows:
        cells = [
            r.config,
            f"{r.ratio:.1f}",
            f"{r.macs / 1e6:.1f} M",
            f"{base.macs / r.macs:.2f}x",
            f"{r.params / 1e6:.3f} M",
            f"{1 / r.latency_ratio:.2f}x",
            _pct(r.quality),
            *([_pct(r.quality_other)] if other_name else []),
            _pct(r.quality_before_refit),
            f"{r.seconds:.0f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def plot(results: dict[str, list[Row]], path: Path) -> None:
    """Quality against MACs kept: one panel per model and quality measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name, rows in results.items():
        if "Mobile" in name:
            panels.append((f"{name}: new crops", rows, "quality", "top-1 agreement (%)"))
            if rows[0].quality_other is not None:
                panels.append(
                    (f"{name}: other photos", rows, "quality_other", "top-1 agreement (%)")
                )
        else:
            panels.append((name, rows, "quality", "accuracy (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2))
    for ax, (title, rows, field, ylabel) in zip(np.atleast_1d(axes), panels, strict=True):
        base = rows[0].macs
        styles = (
            ("magnitude", "o--"),
            ("prune", "s-"),
            (SENSITIVITY, "D-"),
            ("prune,quant", "^-"),
            (f"{SENSITIVITY},quant", "v-"),
        )
        for config, style in styles:
            pts = sorted(
                (r.macs / base, getattr(r, field))
                for r in rows
                if r.config == config and getattr(r, field) is not None
            )
            if pts:
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], style, label=config)
        ax.axhline(100 * getattr(rows[0], field), color="gray", lw=0.8, label="unpruned")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_section(text: str) -> None:
    write_results_section(BEGIN, END, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=128, help="MobileNetV2 calibration crops")
    parser.add_argument("--val", type=int, default=768, help="MobileNetV2 evaluation crops")
    parser.add_argument("--runs", type=int, default=200, help="timed rounds per model")
    parser.add_argument(
        "--quick", action="store_true", help="ratio 0.3 only, no RESULTS.md or plot (smoke test)"
    )
    parser.add_argument("--only", choices=("mobilenet", "digits"), help="one model only")
    parser.add_argument("--reuse", action="store_true", help="reuse models saved in --out")
    parser.add_argument(
        "--out", type=Path, help=f"folder for results.json and models ({OUT}; --quick: {OUT}-quick)"
    )
    parser.add_argument(
        "--no-results", action="store_true", help="write neither RESULTS.md nor the plot"
    )
    parser.add_argument(
        "--no-sensitivity", action="store_true", help="skip the scope=sensitivity rows (slow)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ratios = ((0.3,),) * 3 if args.quick else (RATIOS, QUANT_RATIOS, SENSITIVITY_RATIOS)
    if args.no_sensitivity:
        ratios = (*ratios[:2], ())
    args.out = args.out or (OUT.with_name(OUT.name + "-quick") if args.quick else OUT)
    args.out.mkdir(parents=True, exist_ok=True)
    results, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        cases = []
        if args.only in (None, "mobilenet"):
            cases.append(mobilenet_case(Path(tmp), args.calib, args.val))
        if args.only in (None, "digits"):
            cases.append(digits_case())
        for case in cases:
            results[case.name] = measure(case, ratios, args.runs, args.reuse, notes, args.out)
    (args.out / "results.json").write_text(
        json.dumps({k: [asdict(r) for r in v] for k, v in results.items()}, indent=1)
    )
    names = {c.name: (c.quality_name, c.other_name) for c in cases}
    body = "\n\n".join(
        f"### {name}\n\n{table(rows, *names[name])}" for name, rows in results.items()
    )
    if notes:
        body += "\n\nNot measured: " + "; ".join(notes)
    if args.quick or args.no_results:
        plot(results, args.out / PLOT.name)
    else:
        plot(results, PLOT)
        write_section(_section_text(args, body))
    print(body)


def gate_holdout(samples: int) -> int:
    """How many of `samples` calibration samples onnxopt's pass manager holds out for its gates
    (0: too few to split); the rule of `onnxopt.holdout.split_holdout`."""
    wanted = min(max(round(HOLDOUT_FRACTION * samples), MIN_HOLDOUT), MAX_HOLDOUT)
    return wanted if samples - wanted >= wanted else 0


def refit_holdout(samples: int) -> int:
    """How many of `samples` calibration samples the prune refit holds out to judge itself (the
    last ones; 0: none); the rule of `onnxopt.pruning.reconstruct.refit_data`, defaults."""
    fit, held = PruneOptions().samples, PruneOptions().held_out
    if samples < fit + held:
        held = min(held, samples // 4)
    return held if held >= MIN_HELD_OUT else 0


def _section_text(args, body: str) -> str:
    gates = gate_holdout(args.calib)
    gates_text = (
        f"{gates} of the {args.calib} crops, and the passes fit on the other {args.calib - gates}"
        if gates
        else f"none of the {args.calib} crops: too few to split, the gates measure in-sample"
    )
    refit = refit_holdout(args.calib)
    refit_text = f"the last {refit} of the {args.calib} crops" if refit else "none: too few samples"
    return f"""## prune: structured channel pruning

`python -m benchmarks.bench_prune`. MobileNetV2 (torchvision ImageNet weights): calibration on
{args.calib} crops of the {len(CALIBRATION_PHOTOS)} calibration photos
({", ".join(CALIBRATION_PHOTOS)}; crop seed {CALIB_SEED}); top-1 agreement with the unpruned
model on {args.val} **new crops** of the same photos (seed {NEW_SEED}) and on {args.val} crops of
{len(OTHER_PHOTOS)} **other photos** that no calibration crop comes from
({", ".join(OTHER_PHOTOS)}; seed {OTHER_SEED}). Digits CNN: calibration on the 128 bundled
images, accuracy on the 540 held-out images with their labels. The `magnitude`, `prune` and
`{SENSITIVITY}` rows run the pass by itself, which sees all the calibration samples (no
gate); the rows with `quant` run through onnxopt's pass manager, whose gates measure on a
seeded holdout of the calibration samples that no pass fits on (20 %, 32–256 samples; for
MobileNetV2 {gates_text}). Speed-up: latency of the unpruned model over the
pruned one, timed interleaved in one process (ONNX Runtime CPU, {args.runs} rounds, batch 1
for MobileNetV2, 64 for digits); MACs ratio: MACs before over after. `magnitude` =
`prune{{criterion=l1,reconstruct=false}}`; `prune` = the defaults (`refit_error`, least-squares
reconstruction, `round_to=16`, every group loses `ratio`); `{SENSITIVITY}` removes the same
MACs where a measured probe per group says they cost the model's outputs least; "before
refit" is the agreement before the least-squares refit on the calibration samples the refit
holds out to choose its ridge (the pass's `before_reconstruction`; for MobileNetV2
{refit_text}). Top-1 agreement on
these crops is a sensitive measure: many crops show no clear ImageNet object and have a small
top-1 margin, so any change flips some of them (compare the `quant` row, int8 without pruning).

{body}

![quality vs MACs]({PLOT.name})"""


if __name__ == "__main__":
    main()
