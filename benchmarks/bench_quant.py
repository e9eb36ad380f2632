"""Benchmark of the `quant` pass against ONNX Runtime's quantize_static.

Models: torchvision's ImageNet MobileNetV2 and the EfficientNet-Lite0-shaped network, calibrated
on crops of `CALIBRATION_PHOTOS` (seed 11), their agreement with fp32 measured on new crops of
those photos (seed 12) and on crops of `OTHER_PHOTOS`, photos no calibration crop comes from
(seed 13); the bundled digits CNN (accuracy on the 540 held-out test images with their labels)
and a small transformer (cosine on held-out random features). Each quantization runs in a child
process (its wall time and peak RSS are the child's); latency ratios to fp32 are timed
interleaved in one process (batch 1, 2 threads, ORT CPU); "int8 MACs" is the share of
multiply-accumulates that ORT runs in int8 kernels (`int8_coverage`).

    python -m benchmarks.bench_quant                 # everything, writes benchmarks/RESULTS.md
    python -m benchmarks.bench_quant --only digits   # one model (its subsection is replaced)
    python -m benchmarks.bench_quant --quick --only mobilenet --out /tmp/bq   # smoke, no RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from benchmarks.results_file import write_section as write_results_section
from onnxopt.analyses.stats import bench_facts
from onnxopt.data.holdout import HOLDOUT_FRACTION, MAX_HOLDOUT, MIN_HOLDOUT
from onnxopt.quantization.coverage import int8_coverage
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from onnxopt.runtime.session import make_session, session_options

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- bench_quant:begin -->", "<!-- bench_quant:end -->"
ORT_BATCH = 4
"""ORT's histogram calibrators need equal batches: 4 divides the 300 crops and the 128 images."""
CALIB_SEED, NEW_SEED, OTHER_SEED = 11, 12, 13
"""Crop seeds: calibration crops and new crops of CALIBRATION_PHOTOS, crops of OTHER_PHOTOS (as
in bench_generalization)."""
LATENCY_SEED = 4
DIGITS_CALIB, TRANSFORMER_CALIB = 128, 128
QUICK_CONFIGS = (
    "onnxopt percentile (default)",
    "onnxopt default + target_top1=0.95",
    "ORT MinMax U8S8",
)
"""What `--quick` runs (with 64 calibration and 64 evaluation crops, 20 timed rounds)."""

ONNXOPT_CONFIGS = {
    "onnxopt minmax": {"method": "minmax"},
    "onnxopt percentile (default)": {},
    "onnxopt mse": {"method": "mse"},
    "onnxopt entropy": {"method": "entropy"},
    "onnxopt percentile, no CLE/BC/GPTQ": {
        "equalize": False,
        "bias_correction": False,
        "rounding": "nearest",
    },
    "onnxopt percentile + bias correction": {"bias_correction": True},
    "onnxopt percentile, no CLE": {"equalize": False},
}
ORT_CONFIGS = {
    f"ORT {method} {kind}": {"method": method, "activation": kind}
    for method in ("MinMax", "Percentile", "Entropy")
    for kind in ("S8S8", "U8S8")
}
NNCF_CONFIGS = {
    "NNCF quantize (performance preset)": {},
    "NNCF quantize, mixed preset": {"preset": "MIXED"},
}
"""Measured when `nncf` imports (it is not a dependency: `pip install nncf` in its own venv with
`--system-site-packages`, and run this benchmark with that venv's python)."""


@dataclass
class Row:
    config: str
    speedup: float = 1.0
    top1: float | None = None  # photo models: on new crops of the calibration photos
    top5: float | None = None
    cosine: float = 1.0
    snr_db: float = float("inf")
    accuracy: float | None = None
    top1_other: float | None = None  # photo models: on crops of OTHER_PHOTOS
    cosine_other: float | None = None
    quant_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    int8_macs: float = 0.0
    kept_float: int = 0
    gates_on: str = ""  # onnxopt rows: what the tool measured its gates on (report.fidelity_on)


@dataclass
class Case:
    name: str
    model: Path
    calib: Path  # npz, key = input name
    val: Path  # npz: evaluation inputs (and "label" for digits); photos: new crops
    latency_feed: dict[str, np.ndarray]
    fallback: dict
    configs: tuple[str, ...] | None = None  # names from ONNXOPT_CONFIGS/ORT_CONFIGS; None: all
    options: dict | None = None  # added to every onnxopt config
    other: Path | None = None  # npz: crops of OTHER_PHOTOS (photo models only)


def save_inputs(path: Path, name: str, array: np.ndarray) -> Path:
    np.savez(path, **{name: array})
    return path


def photo_sets(tmp: Path, prefix: str, calib_n: int, val_n: int) -> tuple[Path, Path, Path]:
    """calib.npz (crops of CALIBRATION_PHOTOS), new crops of those photos, and as many crops
    of OTHER_PHOTOS, photos that no calibration crop comes from."""
    from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, photo_crops

    if set(CALIBRATION_PHOTOS) & set(OTHER_PHOTOS):
        raise RuntimeError("CALIBRATION_PHOTOS and OTHER_PHOTOS share a photo")
    sets = {
        "calib": photo_crops(calib_n, seed=CALIB_SEED, photos=CALIBRATION_PHOTOS),
        "val": photo_crops(val_n, seed=NEW_SEED, photos=CALIBRATION_PHOTOS),
        "other": photo_crops(val_n, seed=OTHER_SEED, photos=OTHER_PHOTOS),
    }
    calib, val, other = (
        save_inputs(tmp / f"{prefix}_{name}.npz", "input", array) for name, array in sets.items()
    )
    return calib, val, other


def mobilenet_case(tmp: Path, calib_n: int, val_n: int) -> Case:
    from benchmarks.imagenet_data import photo_crops
    from benchmarks.mobilenet_v2 import export_mobilenet_v2

    model = export_mobilenet_v2(tmp / "mobilenet_v2.onnx")
    calib, val, other = photo_sets(tmp, "mb", calib_n, val_n)
    feed = {"input": photo_crops(1, seed=LATENCY_SEED)}
    return Case("MobileNetV2", model, calib, val, feed, {"target_top1": 0.95}, other=other)


def efficientnet_case(tmp: Path, calib_n: int, val_n: int) -> Case:
    """Random weights (none ship on PyPI), so fidelity to this float network is all its rows
    say; it is here for time, memory and speed at EfficientNet-Lite0's size. The output check
    is off (`min_cosine=0`): its per-image logit signal is weak, and every tool's int8 model
    is far from it (see RESULTS)."""
    from benchmarks.efficientnet_lite import export_efficientnet_lite0
    from benchmarks.imagenet_data import photo_crops

    model = export_efficientnet_lite0(tmp / "efficientnet_lite0.onnx")
    calib, val, other = photo_sets(tmp, "ef", calib_n, val_n)
    feed = {"input": photo_crops(1, seed=LATENCY_SEED)}
    configs = (
        "onnxopt minmax",
        "onnxopt percentile (default)",
        "onnxopt percentile, no CLE/BC/GPTQ",
        "ORT MinMax S8S8",
        "ORT MinMax U8S8",
    )
    options = {"min_cosine": 0.0}
    return Case("EfficientNet-Lite0", model, calib, val, feed, {}, configs, options, other)


def digits_case() -> Case:
    val = np.load(REPO / "examples" / "digits_val.npz")
    feed = {"input": val["input"][:1]}
    return Case(
        "digits CNN",
        REPO / "examples" / "digits_cnn.onnx",
        REPO / "examples" / "digits_calib.npz",
        REPO / "examples" / "digits_val.npz",
        feed,
        {},
    )


def transformer_case(tmp: Path) -> Case:
    import torch

    from tests.zoo import TinyTransformer, export_onnx

    module = TinyTransformer(
        vocab=256, d_model=256, n_heads=4, n_layers=4, seq_len=64, mlp_ratio=4, seed=0
    )
    shape = (1, 64, 256)
    model = export_onnx(
        module,
        (torch.zeros(shape),),
        tmp / "transformer.onnx",
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    rng = np.random.default_rng(0)
    calib = save_inputs(
        tmp / "tf_calib.npz",
        "input",
        rng.standard_normal((TRANSFORMER_CALIB, 64, 256)).astype(np.float32),
    )
    val = save_inputs(
        tmp / "tf_val.npz", "input", rng.standard_normal((64, 64, 256)).astype(np.float32)
    )
    feed = {"input": rng.standard_normal(shape).astype(np.float32)}
    return Case("small transformer", model, calib, val, feed, {})


# --- quantization in a child process ----------------------------------------------------


def quantize_child(spec: dict) -> tuple[float, dict]:
    """(seconds, onnxopt's report: what it measured its gates on and how many tensors its
    fallback kept float; empty for the other tools)."""
    start = time.perf_counter()
    info = {}
    if spec["tool"] == "onnxopt":
        from onnxopt.api import optimize
        from onnxopt.infra.options import format_value

        text = ",".join(f"{k}={format_value(v)}" for k, v in spec["options"].items())
        result = optimize(
            spec["model"],
            spec["out"],
            passes="quant" + (f"{{{text}}}" if text else ""),
            calib=spec["calib"],
        )
        info = {"gates_on": result.report.fidelity_on, "kept_float": _kept_float(result.report)}
    elif spec["tool"] == "nncf":
        nncf_quantize(spec)
    else:
        ort_quantize(spec)
    return time.perf_counter() - start, info


def nncf_quantize(spec: dict) -> None:
    import nncf

    with np.load(spec["calib"]) as data:
        images = data["input"]
    model = onnx.load(spec["model"])
    name = model.graph.input[0].name
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))], lambda x: {name: x})
    options = {"subset_size": len(images)}
    if "preset" in spec["options"]:
        options["preset"] = getattr(nncf.QuantizationPreset, spec["options"]["preset"])
    onnx.save(nncf.quantize(model, dataset, **options), spec["out"])


def ort_quantize(spec: dict) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self, path: str) -> None:
            self.feeds = ort_calibration_feeds(Path(path))
            self.position = 0

        def get_next(self):
            if self.position >= len(self.feeds):
                return None
            self.position += 1
            return self.feeds[self.position - 1]

    prepared = spec["out"] + ".pre.onnx"
    try:
        quant_pre_process(spec["model"], prepared)
    except Exception:  # its symbolic shape inference fails on some models: use the raw model
        prepared = spec["model"]
    activation = QuantType.QUInt8 if spec["options"]["activation"] == "U8S8" else QuantType.QInt8
    quantize_static(
        prepared,
        spec["out"],
        Reader(spec["calib"]),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, spec["options"]["method"]),
    )


def ort_calibration_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """ORT's calibration feeds: an .npz cut into batches of ORT_BATCH along axis 0 (every
    array of it, by input name), or a folder of .npz files, each one whole feed."""
    if path.is_dir():
        feeds = []
        for file in sorted(path.glob("*.npz")):
            with np.load(file) as data:
                feeds.append({key: data[key] for key in data.files})
        return feeds
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    rows = len(next(iter(arrays.values())))
    return [
        {key: array[start : start + ORT_BATCH] for key, array in arrays.items()}
        for start in range(0, rows, ORT_BATCH)
    ]


def run_module_child(module: str, spec: dict) -> subprocess.CompletedProcess:
    """`python -m module --child SPEC` in `spec["workdir"]`, this repository importable."""
    return subprocess.run(
        [sys.executable, "-m", module, "--child", json.dumps(spec)],
        cwd=spec["workdir"],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
    )


def run_child(spec: dict) -> tuple[float, float, dict]:
    """(seconds, peak RSS in MB, onnxopt's report fields) of one quantization in a fresh process;
    the peak is the child's own VmHWM (a forked child's rusage would also count the parent's
    pages)."""
    done = run_module_child("benchmarks.bench_quant", spec)
    if done.returncode != 0:
        raise RuntimeError(
            f"quantization failed: {spec['tool']} {spec['options']}: {done.stderr[-2000:]}"
        )
    last = json.loads(done.stdout.strip().splitlines()[-1])
    return last["seconds"], last["peak_kb"] / 1024, last["info"]


def peak_rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# --- measuring ----------------------------------------------------------------------------


def outputs(model: onnx.ModelProto | Path, images: np.ndarray) -> np.ndarray:
    session = make_session(model, options=session_options(threads=2))
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + 32]})[0] for i in range(0, len(images), 32)]
    )


def fidelity(reference: np.ndarray, candidate: np.ndarray, labels) -> dict:
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    out = {
        "cosine": float((r * c).sum() / np.sqrt((r * r).sum() * (c * c).sum())),
        "snr_db": _snr(r, c),
    }
    if r.ndim == 2:
        top = r.argmax(1)
        out["top1"] = float(np.mean(c.argmax(1) == top))
        out["top5"] = float(np.mean(np.any(np.argsort(-c, axis=1)[:, :5] == top[:, None], axis=1)))
    if labels is not None:
        out["accuracy"] = float(np.mean(c.argmax(1) == labels))
    return out


def _snr(reference: np.ndarray, candidate: np.ndarray) -> float:
    error = float(((reference - candidate) ** 2).sum())
    return (
        float("inf") if error == 0 else float(10 * np.log10((reference * reference).sum() / error))
    )


def other_fidelity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Top-1 agreement and cosine on the crops of OTHER_PHOTOS."""
    got = fidelity(reference, candidate, None)
    return {"top1_other": got["top1"], "cosine_other": got["cosine"]}


def _inputs(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path) as data:
        return data["input"], (data["label"] if "label" in data.files else None)


def scores(case: Case, model, references: list[np.ndarray]) -> dict:
    """Row fields for `model` (path or proto): fidelity to fp32 on the evaluation inputs and,
    for photo models, on the other photos; fp32's outputs are computed into the empty
    `references` on the first call. The inputs are read per call so that no crops stay in
    memory while a child quantizes (ORT's histogram calibrators peak near 19 GB on MobileNetV2)."""
    images, labels = _inputs(case.val)
    if not references:
        references.append(outputs(case.model, images))
    got = fidelity(references[0], outputs(model, images), labels)
    if case.other is not None:
        other, _ = _inputs(case.other)
        if len(references) < 2:
            references.append(outputs(case.model, other))
        got.update(other_fidelity(references[1], outputs(model, other)))
    return got


def measure(
    case: Case, tmp: Path, runs: int, with_ort: bool, only: list[str] | None = None
) -> list[Row]:
    references: list[np.ndarray] = []
    float_row = Row("fp32", **scores(case, case.model, references))
    rows, paths = [float_row], [case.model]
    configs = [("onnxopt", name, opts) for name, opts in ONNXOPT_CONFIGS.items()]
    if case.fallback:
        configs.append(("onnxopt", f"onnxopt default + {_text(case.fallback)}", case.fallback))
    if with_ort:
        configs += [("ort", name, opts) for name, opts in ORT_CONFIGS.items()]
    if importlib.util.find_spec("nncf") is not None and case.name == "MobileNetV2":
        configs += [("nncf", name, opts) for name, opts in NNCF_CONFIGS.items()]
    if case.configs is not None:
        configs = [c for c in configs if c[1] in case.configs]
    if only is not None:
        configs = [c for c in configs if c[1] in only]
    if case.options:
        configs = [(t, n, {**case.options, **o} if t == "onnxopt" else o) for t, n, o in configs]
    for index, (tool, name, options) in enumerate(configs):
        out = tmp / f"{case.model.stem}_{index}.onnx"
        spec = {
            "tool": tool,
            "model": str(case.model),
            "calib": str(case.calib),
            "out": str(out),
            "options": options,
            "workdir": str(tmp),
        }
        seconds, rss, info = run_child(spec)
        model = onnx.load(str(out))
        row = Row(
            name,
            quant_seconds=seconds,
            peak_rss_mb=rss,
            int8_macs=int8_coverage(model).fraction,
            **info,
        )
        for key, value in scores(case, model, references).items():
            setattr(row, key, value)
        rows.append(row)
        paths.append(out)
        print(f"{case.name}: {name}: {asdict(row)}", flush=True)
    report = benchmark_models(
        [str(p) for p in paths],
        settings=BenchSettings(threads=2, runs=runs, memory=False),
        data=[case.latency_feed],
        facts=bench_facts,
    )
    for row, bench in zip(rows, report.models, strict=True):
        row.speedup = 1.0 / bench.ratio
    return rows


def _kept_float(report) -> int:
    """Tensors the accuracy-aware fallback kept float (the report's stats: the model's metadata
    keeps only scalar stats)."""
    for record in report.passes:
        fallback = record.stats.get("fallback")
        if fallback:
            return len(fallback["kept_float"])
    return 0


def _text(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


# --- report -------------------------------------------------------------------------------

NOTES = """
Notes: top-1 agreement on 1000 crops has a standard error of about 0.8 points at 93 % (1.2 on
the 500 crops used before). ORT's
S8S8 QDQ models are not fused into int8 kernels by ORT on this x86 CPU (0 % int8 MACs), which
is why `activation_type=auto` picks uint8 on CPU. NNCF (3.4.0, ONNX backend, `nncf.quantize` on
the same 300 crops) is measured on MobileNetV2 when it is installed (see `NNCF_CONFIGS`).
"""


def table(rows: list[Row], photos: bool = False) -> str:
    """The model's table; `photos`: agreement on new crops of the calibration photos beside the
    other photos' columns (models without photos keep their plain columns)."""
    if photos:
        return _photo_table(rows)
    accuracy = any(r.accuracy is not None for r in rows)
    head = "| config | speed-up | top-1 | top-5 | " + ("accuracy | " if accuracy else "")
    head += "cosine | SNR dB | quant time | peak RSS | int8 MACs |\n"
    head += "|---|---:|---:|---:|" + ("---:|" if accuracy else "") + "---:|---:|---:|---:|---:|\n"
    lines = []
    for r in rows:
        cells = [r.config, f"{r.speedup:.2f}x", _pct(r.top1), _pct(r.top5)]
        if accuracy:
            cells.append(_pct(r.accuracy))
        cells += [f"{r.cosine:.4f}", _snr_cell(r), *_cost_cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def _photo_table(rows: list[Row]) -> str:
    head = (
        "| config | speed-up | top-1 new crops | top-1 other photos | top-5 new crops "
        "| cosine new crops | cosine other photos | SNR dB new crops | quant time | peak RSS "
        "| int8 MACs |\n|---|" + "---:|" * 10 + "\n"
    )
    lines = []
    for r in rows:
        cells = [
            r.config,
            f"{r.speedup:.2f}x",
            _pct(r.top1),
            _pct(r.top1_other),
            _pct(r.top5),
            f"{r.cosine:.4f}",
            "" if r.cosine_other is None else f"{r.cosine_other:.4f}",
            _snr_cell(r),
            *_cost_cells(r),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines)


def _snr_cell(r: Row) -> str:
    return "inf" if r.snr_db == float("inf") else f"{r.snr_db:.1f}"


def _cost_cells(r: Row) -> list[str]:
    cost = [f"{r.quant_seconds:.1f} s", f"{r.peak_rss_mb:.0f} MB"] if r.peak_rss_mb else ["", ""]
    return [*cost, f"{100 * r.int8_macs:.0f} %"]


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.1f} %"


def merged_sections(new: dict[str, str]) -> str:
    """The model subsections of the current RESULTS section, with `new` ones replaced/added."""
    current = RESULTS.read_text() if RESULTS.exists() else ""
    old: dict[str, str] = {}
    if BEGIN in current and END in current:
        body = current.split(BEGIN, 1)[1].split(END, 1)[0]
        for block in body.split("\n### ")[1:]:
            name, _, rest = block.partition("\n")
            old[name.strip()] = "### " + name.strip() + "\n" + rest.rstrip()
    old.update(new)
    order = ["MobileNetV2", "EfficientNet-Lite0", "digits CNN", "small transformer"]
    names = sorted(old, key=lambda n: order.index(n) if n in order else len(order))
    return "\n\n".join(old[name] for name in names)


def write_section(text: str) -> None:
    write_results_section(BEGIN, END, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument(
        "--calib", type=int, default=300, help="MobileNetV2/EfficientNet calibration crops"
    )
    parser.add_argument(
        "--val", type=int, default=1000, help="MobileNetV2/EfficientNet evaluation crops"
    )
    parser.add_argument("--runs", type=int, default=300, help="timed rounds per model")
    parser.add_argument("--only", choices=("mobilenet", "efficientnet", "digits", "transformer"))
    parser.add_argument("--no-ort", action="store_true", help="skip ORT quantize_static")
    parser.add_argument("--configs", nargs="+", help="config names to run (fp32 always)")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for the JSON (benchmarks/out; --quick: benchmarks/out/quick)",
    )
    parser.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run (sets --calib 64 --val 64 --runs 20): "
        f"{len(QUICK_CONFIGS)} configs, no RESULTS.md",
    )
    args = parser.parse_args()
    if args.child:
        seconds, info = quantize_child(json.loads(args.child))
        print(json.dumps({"seconds": seconds, "peak_kb": peak_rss_kb(), "info": info}))
        return
    if args.quick:
        args.calib, args.val, args.runs, args.no_results = 64, 64, 20, True
        args.configs = args.configs or list(QUICK_CONFIGS)
    args.out = args.out or HERE / "out" / ("quick" if args.quick else "")
    sections: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as name:
        tmp = Path(name)
        cases = []
        if args.only in (None, "mobilenet"):
            cases.append(mobilenet_case(tmp, args.calib, args.val))
        if args.only in (None, "efficientnet"):
            cases.append(efficientnet_case(tmp, args.calib, args.val))
        if args.only in (None, "digits"):
            cases.append(digits_case())
        if args.only in (None, "transformer"):
            cases.append(transformer_case(tmp))
        for case in cases:
            rows = measure(case, tmp, args.runs, not args.no_ort, args.configs)
            photos = case.other is not None
            sections[case.name] = f"### {case.name}\n\n{table(rows, photos)}"
            args.out.mkdir(parents=True, exist_ok=True)
            slug = case.name.split()[0].lower()
            (args.out / f"quant_{slug}.json").write_text(
                json.dumps([asdict(r) for r in rows], indent=1)
            )
            print(sections[case.name], flush=True)
    if not args.no_results:
        write_section(_section(args, merged_sections(sections)))


def held_out(samples: int) -> int:
    """How many of `samples` calibration samples onnxopt's gates hold out (0: too few to split,
    the gates then measure in-sample); the rule of `onnxopt.holdout.split_holdout`."""
    wanted = min(max(round(HOLDOUT_FRACTION * samples), MIN_HOLDOUT), MAX_HOLDOUT)
    return wanted if samples - wanted >= wanted else 0


def _gates_hold_out(samples: int) -> str:
    kept = held_out(samples)
    return f"hold out {kept}" if kept else "measure in-sample: too few samples to split"


def _section(args, body: str) -> str:
    from benchmarks.efficientnet_lite import NORM_CROPS, NORM_SEED
    from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, PHOTOS

    command = "python -m benchmarks.bench_quant"
    version = __import__("onnxruntime").__version__
    fit = args.calib - held_out(args.calib)
    return f"""## quant: static int8 quantization vs ONNX Runtime's quantize_static

`{command}` on this machine (2 cores, AVX-512 VNNI, ONNX Runtime {version} CPU).
MobileNetV2: torchvision ImageNet weights. Calibration: {args.calib} crops of the
{len(CALIBRATION_PHOTOS)} calibration photos ({", ".join(CALIBRATION_PHOTOS)}; crop seed
{CALIB_SEED}). Agreement with fp32 on two sets of {args.val} crops: **new crops**, further crops
of the same {len(CALIBRATION_PHOTOS)} photos (seed {NEW_SEED}; the top-1, top-5, cosine and SNR
columns so labelled), and **other photos**, crops of {len(OTHER_PHOTOS)} photos that no
calibration crop comes from ({", ".join(OTHER_PHOTOS)}; seed {OTHER_SEED}). onnxopt's own gates
(the output check after the pass) measure on a seeded holdout of the calibration samples that
the pass does not fit on (20 %, 32–256 samples; of the {args.calib} crops they
{_gates_hold_out(args.calib)}), not on either set, and the pass fits on the other {fit} (ORT and
NNCF calibrate on all {args.calib}); `target_top1` is met by the pass on those {fit} calibration
crops (no `--val` is given; the pass would not see it). EfficientNet-Lite0 (4.7 M parameters,
0.4 G MACs): the same three crop sets, but random weights with BatchNorm statistics measured on
{NORM_CROPS} crops of the {len(PHOTOS)} photos of `PHOTOS` (seed {NORM_SEED}; some of them are
other photos: they build the float network, no pass fits on them), as no weights ship on PyPI,
so its rows measure time, memory, speed and fidelity to that float network only; onnxopt runs
it with `min_cosine=0` (its int8 models, like ORT's, are too far from its weak logit signal for
the default 0.9 output check). Digits: calibration on the {DIGITS_CALIB} bundled images (the
gates {_gates_hold_out(DIGITS_CALIB)}), accuracy on the 540 held-out labelled images.
Transformer: 4 layers, d=256, sequence 64, random weights and features ({TRANSFORMER_CALIB}
calibration samples, the gates {_gates_hold_out(TRANSFORMER_CALIB)}; 64 evaluation samples).
Speed-up: fp32 latency over the model's, interleaved
in one process, batch 1, 2 threads, {args.runs} rounds. Quantization time and peak RSS: the
quantizing child process (onnxopt: the whole `onnxopt optimize` run with its checks; ORT:
`quant_pre_process` + `quantize_static`, both QDQ with per-channel int8 weights; calibration
batches of 8 for onnxopt, 4 for ORT, whose histogram methods need equal batches).
onnxopt defaults: percentile 99.99, uint8 activations, channel equalization, GPTQ rounding
in act-order (bias correction is an option: with GPTQ it left cosine within 0.0001 and cost
top-1 on two of three crop sets; on 1000 fresh crops, seed 5: 92.0 % with it, 93.2 % without,
before act-order). "int8 MACs": share of multiply-accumulates in ORT's int8 kernels.
{NOTES}
{body}"""


if __name__ == "__main__":
    main()
