"""Benchmark the `prune` pass on MobileNetV2 (ImageNet weights) and the digits CNN.

Run from the repository root (needs the ``bench`` extras): ``python -m benchmarks.bench_prune``.
For each ratio it prunes the model three ways and measures MACs, parameters, latency ratio to
the unpruned model (interleaved, one process, batch 1) and quality:

- ``magnitude``: ``prune{criterion=l1,reconstruct=false}``, plain L1 magnitude pruning;
- ``prune``: the defaults (``refit_error`` criterion, least-squares reconstruction);
- ``prune{scope=sensitivity}`` (ratios 0.2 and 0.3): the same MACs as ``prune``, allocated
  across groups by a measured probe of each group (``onnxopt/pruning/sensitivity.py``);
- ``prune,quant``: either pruning followed by the ``quant`` pass (when it is available).

Quality: top-1 agreement with the unpruned model on photo crops disjoint from the calibration
crops (MobileNetV2), accuracy on the held-out digits with their real labels (digits CNN).
Writes ``benchmarks/out/prune/results.json``, the plot ``benchmarks/prune_quality_vs_macs.png``
and the ``prune`` section of ``benchmarks/RESULTS.md`` (between its markers, nothing else).
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

from benchmarks.imagenet_data import photo_crops
from benchmarks.mobilenet_v2 import export_mobilenet_v2
from benchmarks.results_file import write_section as write_results_section
from onnxopt.analyses.macs import count_macs
from onnxopt.analyses.stats import bench_facts, parameter_count
from onnxopt.data.sources import IterableSource, NpzSource, input_specs
from onnxopt.errors import OnnxoptError, OptionError, PassCrashed
from onnxopt.infra.manager import PassManager
from onnxopt.infra.pass_base import PassContext
from onnxopt.infra.pipeline import parse_pipeline
from onnxopt.infra.registry import get_pass_class
from onnxopt.passes.prune import PruneOptions, PrunePass
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


@dataclass
class Row:
    model: str
    config: str
    ratio: float
    macs: int
    params: int
    quality: float
    latency_ratio: float = 1.0
    seconds: float = 0.0
    quality_before_refit: float | None = None


@dataclass
class Case:
    """One model with its calibration data and quality metric."""

    name: str
    model: onnx.ModelProto
    calib: object
    quality_name: str
    quality: object  # ModelProto -> float
    batch: int = 1


def batched(images: np.ndarray, size: int) -> list[dict[str, np.ndarray]]:
    return [{"input": images[i : i + size]} for i in range(0, len(images), size)]


def mobilenet_case(workdir: Path, calib_n: int, val_n: int) -> Case:
    model = onnx.load(export_mobilenet_v2(workdir / "mobilenet_v2.onnx"))
    calib = IterableSource(batched(photo_crops(calib_n, seed=0), 16), input_specs(model))
    val = photo_crops(val_n, seed=1)
    reference = _logits(model, val)

    def agreement(candidate: onnx.ModelProto) -> float:
        return float(np.mean(_logits(candidate, val).argmax(1) == reference.argmax(1)))

    return Case("MobileNetV2", model, calib, "top-1 agreement", agreement)


def digits_case() -> Case:
    model = onnx.load("examples/digits_cnn.onnx")
    calib = NpzSource(Path("examples/digits_calib.npz"), input_specs(model), 32)
    val = np.load("examples/digits_val.npz")

    def accuracy(candidate: onnx.ModelProto) -> float:
        logits = make_session(candidate).run(None, {"input": val["input"]})[0]
        return float(np.mean(logits.argmax(1) == val["label"]))

    return Case("digits CNN", model, calib, "accuracy", accuracy, batch=64)


def _logits(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    session = make_session(model)
    return np.concatenate([session.run(None, feed)[0] for feed in batched(images, 64)])


def run_prune(case: Case, ratio: float, **options) -> tuple[onnx.ModelProto, dict]:
    result = PrunePass(PruneOptions(ratio=ratio, **options)).run(
        copy.deepcopy(case.model), PassContext(calibration=case.calib)
    )
    before = (result.stats.get("before_reconstruction") or {}).get("top1_agreement")
    return result.model, {"quality_before_refit": before}


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


def produce(case: Case, config: str, ratio: float, make, reuse: bool):
    """The variant's model and extra fields, from OUT when `reuse` and saved, else computed."""
    tag = re.sub(r"[^a-z0-9]+", "_", f"{case.name.split()[0]}_{config}_{ratio:.1f}".lower())
    model_path, meta_path = OUT / f"{tag}.onnx", OUT / f"{tag}.json"
    if reuse and model_path.exists() and meta_path.exists():
        return onnx.load(model_path), json.loads(meta_path.read_text())
    start = time.perf_counter()
    model, extra = make()
    extra["seconds"] = time.perf_counter() - start
    onnx.save(model, model_path)
    meta_path.write_text(json.dumps(extra))
    return model, extra


def measure(case: Case, ratios, runs: int, reuse: bool, notes: list[str]):
    base = case.model
    rows = [Row(case.name, "unpruned", 0.0, count_macs(base).total, parameter_count(base), 1.0)]
    rows[0].quality = case.quality(base)
    models = [base]
    for config, ratio, make in variants(case, *ratios):
        try:
            model, extra = produce(case, config, ratio, make, reuse)
        except (OnnxoptError, PassCrashed) as exc:  # another pass's failure: note it, go on
            notes.append(f"{case.name} {config} at ratio {ratio}: {exc}")
            logging.warning("%s", notes[-1])
            continue
        row = Row(case.name, config, ratio, count_macs(model).total, parameter_count(model), 0.0)
        row.quality = case.quality(model)
        row.seconds = extra["seconds"]
        row.quality_before_refit = extra.get("quality_before_refit")
        rows.append(row)
        models.append(model)
        logging.info("%s", row)
    settings = BenchSettings(batch=case.batch, runs=runs, memory=False)
    report = benchmark_models(models, settings=settings, facts=bench_facts)
    for row, bench in zip(rows, report.models, strict=True):
        row.latency_ratio = bench.ratio
    return rows


def table(rows: list[Row], quality_name: str) -> str:
    base = rows[0]
    header = "config | ratio | MACs | MACs ratio | params | speed-up"
    lines = [
        f"| {header} | {quality_name} | before refit | pass time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        before = "" if r.quality_before_refit is None else f"{100 * r.quality_before_refit:.1f} %"
        lines.append(
            f"| {r.config} | {r.ratio:.1f} | {r.macs / 1e6:.1f} M | {base.macs / r.macs:.2f}x "
            f"| {r.params / 1e6:.3f} M | {1 / r.latency_ratio:.2f}x | {100 * r.quality:.1f} % "
            f"| {before} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def plot(results: dict[str, list[Row]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    for ax, (name, rows) in zip(np.atleast_1d(axes), results.items(), strict=True):
        base = rows[0].macs
        styles = (
            ("magnitude", "o--"),
            ("prune", "s-"),
            (SENSITIVITY, "D-"),
            ("prune,quant", "^-"),
            (f"{SENSITIVITY},quant", "v-"),
        )
        for config, style in styles:
            pts = sorted((r.macs / base, r.quality) for r in rows if r.config == config)
            if pts:
                ax.plot([100 * p[0] for p in pts], [100 * p[1] for p in pts], style, label=config)
        ax.axhline(100 * rows[0].quality, color="gray", lw=0.8, label="unpruned")
        ax.set_xlabel("MACs kept (%)")
        ax.set_ylabel("top-1 agreement (%)" if "Mobile" in name else "accuracy (%)")
        ax.set_title(name)
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
    parser.add_argument("--quick", action="store_true", help="ratio 0.3 only (smoke test)")
    parser.add_argument("--only", choices=("mobilenet", "digits"), help="one model only")
    parser.add_argument("--reuse", action="store_true", help="reuse models saved in " + str(OUT))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ratios = ((0.3,),) * 3 if args.quick else (RATIOS, QUANT_RATIOS, SENSITIVITY_RATIOS)
    OUT.mkdir(parents=True, exist_ok=True)
    results, notes = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        cases = []
        if args.only in (None, "mobilenet"):
            cases.append(mobilenet_case(Path(tmp), args.calib, args.val))
        if args.only in (None, "digits"):
            cases.append(digits_case())
        for case in cases:
            results[case.name] = measure(case, ratios, args.runs, args.reuse, notes)
    (OUT / "results.json").write_text(
        json.dumps({k: [asdict(r) for r in v] for k, v in results.items()}, indent=1)
    )
    plot(results, PLOT)
    names = {c.name: c.quality_name for c in cases}
    body = "\n\n".join(
        f"### {name}\n\n{table(rows, names[name])}" for name, rows in results.items()
    )
    if notes:
        body += "\n\nNot measured: " + "; ".join(notes)
    write_section(_section_text(args, body))
    print(body)


def _section_text(args, body: str) -> str:
    return f"""## prune: structured channel pruning

`python -m benchmarks.bench_prune` (calibration: {args.calib} MobileNetV2 photo crops, the 128
bundled digits images; MobileNetV2 agreement on {args.val} other crops, digits accuracy on the
540 held-out images with their labels). Speed-up: latency of the unpruned model over the
pruned one, timed interleaved in one process (ONNX Runtime CPU, {args.runs} rounds, batch 1
for MobileNetV2, 64 for digits); MACs ratio: MACs before over after. `magnitude` =
`prune{{criterion=l1,reconstruct=false}}`; `prune` = the defaults (`refit_error`, least-squares
reconstruction, `round_to=16`, every group loses `ratio`); `{SENSITIVITY}` removes the same
MACs where a measured probe per group says they cost the model's outputs least; "before
refit" is the agreement on the calibration data before reconstruction. Top-1 agreement on
these crops is a sensitive measure: many crops show no clear ImageNet object and have a small
top-1 margin, so any change flips some of them (compare the `quant` row, int8 without pruning).

{body}

![quality vs MACs]({PLOT.name})"""


if __name__ == "__main__":
    main()
