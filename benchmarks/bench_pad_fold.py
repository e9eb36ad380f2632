"""int8 speed of a TF-style SAME-padding export before and after `cleanup` folds its Pads.

TensorFlow's SAME padding of a strided conv pads one more row/column at the end than at the
start; exports of such networks carry an explicit constant-zero `Pad` before each strided conv
(5 in EfficientNet-Lite0). Here EfficientNet-Lite0 (`benchmarks.efficientnet_lite`: seeded
weights, BatchNorm statistics from photos) is rewritten that way: each stride-2 Conv2d gets a
ZeroPad2d (k=3: 0 before, 1 after; k=5: 1 before, 2 after) and padding 0, then exported.

Quantized five ways (U8S8, per-channel int8 weights, QDQ): onnxopt `quant` without the fold
(`cleanup{fold_pad=false},quant{prepare=false}`), with it (plain `quant`, whose cleanup
folds), and with it and an int8 image stem (`float_stem=false`: with the Pad in front, the
stem conv is not recognized as one, so the unfolded row has it in int8 too), ORT
`quantize_static` MinMax on the export and on the export after onnxopt's `cleanup`.
Speed-ups over the fp32 export are timed interleaved in one process (batch 1, 2 threads);
"int8 MACs", the Pads and the activation Q/DQ nodes left come from ORT's optimized graph
(`int8_coverage`). Fidelity: top-1 agreement and cosine with the fp32 export on new crops of
the calibration photos and on crops of other photos.

    python -m benchmarks.bench_pad_fold                      # writes its RESULTS.md section
    python -m benchmarks.bench_pad_fold --quick --no-write   # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from benchmarks.bench_quant import fidelity, ort_quantize, outputs, photo_sets
from benchmarks.efficientnet_lite import build_efficientnet_lite0
from benchmarks.imagenet_data import photo_crops
from benchmarks.results_file import write_section
from onnxopt.analyses.stats import bench_facts
from onnxopt.api import optimize
from onnxopt.quantization.coverage import int8_coverage, optimized_graph
from onnxopt.runtime.bench import BenchSettings, benchmark_models
from tests.zoo import export_onnx

BEGIN, END = "<!-- bench_pad_fold:begin -->", "<!-- bench_pad_fold:end -->"
LATENCY_SEED = 4


def tf_same_padding(module: nn.Module) -> int:
    """Give each stride-2 Conv2d of `module` an explicit ZeroPad2d, TF SAME style; returns how
    many (inputs of even size: total padding k - 2, the larger half at the end)."""
    count = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
            k = child.kernel_size[0]
            before, after = (k - 2) // 2, (k - 2) - (k - 2) // 2
            child.padding = (0, 0)
            setattr(
                module, name, nn.Sequential(nn.ZeroPad2d((before, after, before, after)), child)
            )
            count += 1
        else:
            count += tf_same_padding(child)
    return count


def export_tf_style(path: Path, seed: int = 0) -> tuple[Path, int]:
    model = build_efficientnet_lite0(seed)
    pads = tf_same_padding(model)
    exported = export_onnx(
        model,
        (torch.zeros(1, 3, 224, 224),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return exported, pads


def quantize_all(model: Path, calib: Path, tmp: Path) -> dict[str, Path]:
    """name -> quantized model path."""
    paths = {"fp32 export": model}
    runs = {
        "onnxopt quant, Pads kept": "cleanup{fold_pad=false},quant{prepare=false,min_cosine=0}",
        "onnxopt quant, Pads folded": "quant{min_cosine=0}",
        "onnxopt quant, Pads folded, int8 stem": "quant{min_cosine=0,float_stem=false}",
    }
    for name, passes in runs.items():
        out = tmp / f"{len(paths)}.onnx"
        optimize(model, out, passes=passes, calib=calib)
        paths[name] = out
    folded = tmp / "folded_fp32.onnx"
    optimize(model, folded, passes="cleanup")
    for name, source in (
        ("ORT MinMax U8S8 on the export", model),
        ("ORT MinMax U8S8 on the folded export", folded),
    ):
        out = tmp / f"{len(paths)}.onnx"
        spec = {
            "model": str(source),
            "calib": str(calib),
            "out": str(out),
            "options": {"method": "MinMax", "activation": "U8S8"},
        }
        ort_quantize(spec)
        paths[name] = out
    return paths


def graph_facts(path: Path) -> dict:
    model = onnx.load(str(path))
    coverage = int8_coverage(model)
    fused = optimized_graph(model)
    return {
        "int8": coverage.fraction,
        "pads": sum(n.op_type == "Pad" for n in fused.graph.node),
        "qdq": coverage.activation_qdq,
        "float": coverage.float_layers,
    }


def measure(quick: bool) -> tuple[list[dict], int]:
    calib_n, val_n, runs = (32, 64, 20) if quick else (300, 500, 300)
    with tempfile.TemporaryDirectory(prefix="bench-pad-fold-") as workdir:
        tmp = Path(workdir)
        model, pads = export_tf_style(tmp / "efficientnet_lite0_tf.onnx")
        calib, val, other = photo_sets(tmp, "tf", calib_n, val_n)
        paths = quantize_all(model, calib, tmp)
        sets = [np.load(val)["input"], np.load(other)["input"]]
        references = [outputs(model, images) for images in sets]
        rows = []
        for name, path in paths.items():
            new, far = (
                fidelity(r, outputs(path, x), None) for r, x in zip(references, sets, strict=True)
            )
            row = {
                "config": name,
                "top1": new["top1"],
                "cosine": new["cosine"],
                "top1_other": far["top1"],
                "cosine_other": far["cosine"],
                **graph_facts(path),
            }
            rows.append(row)
            print(row, flush=True)
        feed = {"input": photo_crops(1, seed=LATENCY_SEED)}
        report = benchmark_models(
            [str(p) for p in paths.values()],
            settings=BenchSettings(threads=2, runs=runs, memory=False),
            data=[feed],
            facts=bench_facts,
        )
        for row, bench in zip(rows, report.models, strict=True):
            row["speedup"] = 1.0 / bench.ratio
        return rows, pads


def table(rows: list[dict]) -> str:
    lines = [
        "| config | speed-up | int8 MACs | Pads left | activation Q/DQ | top-1 new crops "
        "| cosine | top-1 other photos | cosine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['speedup']:.2f}x | {100 * r['int8']:.0f} % | {r['pads']} | "
            f"{r['qdq']} | {100 * r['top1']:.1f} % | {r['cosine']:.4f} | "
            f"{100 * r['top1_other']:.1f} % | {r['cosine_other']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32/64 crops, 20 timed rounds")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rows, pads = measure(args.quick)
    text = table(rows)
    print(text)
    for row in rows[1:]:
        if row["float"]:
            print(f"{row['config']}: float compute nodes in ORT's graph: {row['float']}")
    if not args.no_write:
        write_section(BEGIN, END, _section(text, pads))


def _section(text: str, pads: int) -> str:
    return (
        "## Pad folding: a TF-style SAME export of EfficientNet-Lite0 (issue 20)\n\n"
        "`python -m benchmarks.bench_pad_fold` (2 CPU cores shared with other jobs; speed-ups "
        "timed interleaved in one process, batch 1, 2 threads, 300 rounds; 300 calibration "
        "crops, 500 new crops and 500 crops of other photos). The export has an explicit "
        f"zero `Pad` before each of its {pads} strided convs. Random weights with BatchNorm "
        "statistics from photos: fidelity is to this float network only (onnxopt runs with "
        "`min_cosine=0`, as in the quant section).\n\n" + text
    )


if __name__ == "__main__":
    main()
