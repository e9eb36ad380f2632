"""How small must a model's output error be for a given top-1 agreement with fp32?

MobileNetV2 (ImageNet weights) on the crop sets of `bench_distill`: 500 new crops of the
calibration photos and 500 crops of other photos. For each set: the fp32 logits, then the
logits of onnxopt's `quant` output (calibrated on the 1024 calibration crops), and the top-1
agreement when the logits carry (a) int8's own error scaled up or down, (b) independent
Gaussian noise, at a range of signal-to-noise ratios (10 log10 of logit power over error power,
per sample). It says what an agreement target asks of the error: the SNR that int8 reaches,
against the SNR a target needs.

Then where the disagreements are: each crop's margin is fp32's top-1 logit minus its second;
agreement is broken down by margin and by photo, for `quant` and for any further models given
with `--model LABEL=PATH` (e.g. a `quant,distill` output of the same calibration crops), each
also with its activations left unrounded (`float_activations`: what its int8 weights alone
allow). A crop whose two best classes are a fraction of a logit apart flips under an error
that leaves a confident crop alone, so the share of near-ties in a set bounds the agreement an
error level can give there.

    python -m benchmarks.agreement_vs_snr
    python -m benchmarks.agreement_vs_snr --model "quant,distill=/tmp/qd.onnx"
"""

from __future__ import annotations

import argparse
import copy
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx

from benchmarks.imagenet_data import CALIBRATION_PHOTOS, OTHER_PHOTOS, photo_crops, photo_names
from benchmarks.results_file import write_section

BEGIN, END = "<!-- agreement_vs_snr:begin -->", "<!-- agreement_vs_snr:end -->"
LEVELS = (18, 20, 22, 24, 26, 28, 30, 32, 34, 38)
DRAWS = 10
MARGIN_EDGES = (0.25, 0.5, 1.0, 2.0)
"""Bins of fp32's top-1 minus top-2 logit: below 0.25, 0.25-0.5, ..., 2 and above."""
NEAR_TIE = 0.5


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


def margins(logits_: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 logit of each row."""
    ordered = np.sort(logits_, axis=1)
    return ordered[:, -1] - ordered[:, -2]


def margin_bins(reference: np.ndarray) -> np.ndarray:
    """Each row's bin in MARGIN_EDGES: 0 below the first edge, len(edges) at or above the last."""
    return np.searchsorted(np.asarray(MARGIN_EDGES), margins(reference), side="right")


def agreement_by(groups: np.ndarray, reference: np.ndarray, other: np.ndarray,
                 keys) -> list[float | None]:
    """Top-1 agreement within each group key (None for an empty group)."""
    same = reference.argmax(1) == other.argmax(1)
    return [float(same[groups == key].mean()) if np.any(groups == key) else None
            for key in keys]


def float_activations(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a QDQ model whose activations skip rounding: each QuantizeLinear ->
    DequantizeLinear pair on a computed tensor becomes a Clip to the range the pair can hold
    (the pair clips: `quant` folds ReLU6 into it). Weights keep their int8 values; what is
    left of the error is theirs and the ranges'. A pair whose scale or zero point is not a
    scalar constant (per-channel, computed) is left as it is."""
    from onnx import helper, numpy_helper

    from onnxopt.ir.edit import remove_dead_code
    from onnxopt.ir.graph import GraphIndex

    model = copy.deepcopy(model)
    graph = model.graph
    index = GraphIndex(graph)
    nodes = []
    for node in graph.node:
        source = index.producer.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        bounds = _pair_range(source, index) if source is not None else None
        if bounds is None:
            nodes.append(node)
            continue
        names = [f"{node.output[0]}/low", f"{node.output[0]}/high"]
        for name, value in zip(names, bounds, strict=True):
            graph.initializer.append(numpy_helper.from_array(np.float32(value), name))
        nodes.append(helper.make_node("Clip", [source.input[0], *names], [node.output[0]],
                                      name=f"{node.name}/clip"))
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead_code(model)  # the QuantizeLinear nodes no one reads now, and their constants
    return model


def _pair_range(quantizer: onnx.NodeProto, index) -> tuple[float, float] | None:
    """The float range a per-tensor QuantizeLinear can hold, or None for another node or a
    scale / zero point that is not one constant value."""
    if quantizer.op_type != "QuantizeLinear":
        return None
    scale = index.constant(quantizer.input[1])
    has_zero = len(quantizer.input) > 2 and quantizer.input[2]
    # no zero point input: uint8 with zero point 0 (the operator's default)
    zero = index.constant(quantizer.input[2]) if has_zero else np.uint8(0)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return None
    limits = np.iinfo(zero.dtype)
    return tuple(scale.item() * (float(level) - float(zero.item()))
                 for level in (limits.min, limits.max))


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
    parser.add_argument("--model", action="append", default=[], metavar="LABEL=PATH",
                        help="a further MobileNetV2 output to break down beside quant")
    parser.add_argument("--no-results", action="store_true")
    args = parser.parse_args()
    extra = dict(_labelled(text) for text in args.model)
    from benchmarks.mobilenet_v2 import export_mobilenet_v2
    from onnxopt.api import optimize

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = export_mobilenet_v2(folder / "fp32.onnx")
        calib = folder / "calib.npz"
        np.savez(calib, input=photo_crops(args.calib_samples, seed=11, photos=CALIBRATION_PHOTOS))
        quant = folder / "quant.onnx"
        optimize(fp32, quant, passes="quant", calib=calib, seed=0)
        models = {"quant": quant} | extra
        for label, path in list(models.items()):
            # the same int8 weights with exact activations: the weights' share of the error
            unrounded = folder / f"{len(models)}.onnx"
            onnx.save(float_activations(onnx.load(str(path))), unrounded)
            models[f"{label}, float activations"] = unrounded
        sets = {"new crops": (12, CALIBRATION_PHOTOS), "other photos": (13, OTHER_PHOTOS)}
        lines = []
        for name, (seed, photos) in sets.items():
            images = photo_crops(args.eval_samples, seed=seed, photos=photos)
            reference = logits(fp32, images)
            outputs = {label: logits(path, images) for label, path in models.items()}
            int8 = outputs["quant"]
            names = np.array(photo_names(args.eval_samples, photos=photos))
            lines.append((name, snr_db(reference, int8 - reference), agreement(reference, int8),
                          curves(reference, int8, seed=len(lines)),
                          breakdown(reference, outputs, names, photos)))
    text = render(lines, args)
    print(text)
    if not args.no_results:
        write_section(BEGIN, END, text)


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, path = text.rpartition("=")
    if not sep or not label or not Path(path).is_file():
        raise SystemExit(f"--model wants LABEL=PATH to an existing .onnx file, got {text!r}")
    return label, Path(path)


def breakdown(reference: np.ndarray, outputs: dict[str, np.ndarray], names: np.ndarray,
              photos: tuple[str, ...]) -> dict:
    """Crop counts and each model's agreement per margin bin and per photo."""
    bins = margin_bins(reference)
    keys = range(len(MARGIN_EDGES) + 1)
    near = margins(reference) < NEAR_TIE
    return {
        "overall": {label: (agreement(reference, out), snr_db(reference, out - reference))
                    for label, out in outputs.items()},
        "bin_counts": [int(np.sum(bins == key)) for key in keys],
        "by_bin": {label: agreement_by(bins, reference, out, keys)
                   for label, out in outputs.items()},
        "photo_counts": [int(np.sum(names == photo)) for photo in photos],
        "photo_near_ties": [float(near[names == photo].mean()) for photo in photos],
        "by_photo": {label: agreement_by(names, reference, out, photos)
                     for label, out in outputs.items()},
        "photos": photos,
    }


def _bin_names() -> list[str]:
    edges = [f"{edge:g}" for edge in MARGIN_EDGES]
    return ([f"< {edges[0]}"] + [f"{a}–{b}" for a, b in itertools.pairwise(edges)]
            + [f"≥ {edges[-1]}"])


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def render(lines, args) -> str:
    out = ["## Top-1 agreement against output error (MobileNetV2)", "",
           "`python -m benchmarks.agreement_vs_snr`. The logits of onnxopt's `quant` output "
           f"(calibrated on {args.calib_samples} crops of the calibration photos) against fp32's "
           f"on {args.eval_samples} new crops of those photos and {args.eval_samples} crops of "
           "other photos; then the agreement when fp32's logits carry int8's own error rescaled "
           "to each SNR, or independent Gaussian noise at it (mean of "
           f"{DRAWS} draws). SNR: 10 log10 of logit power over error power. Then where the "
           "disagreements are: agreement by fp32's margin (its top-1 logit minus its second) "
           "and by photo, for " + ", ".join(f"`{label}`" for label in lines[0][4]["by_bin"])
           + f"; near-ties are crops with a margin under {NEAR_TIE:g} logits. A model marked "
           "*float activations* is the same file with each activation Q/DQ pair replaced by "
           "a clip to its range: no rounding, so the error left is its int8 weights' (and "
           "the ranges').", ""]
    for name, snr, top1, table, parts in lines:
        out.append(f"**{name}**: int8 `quant` reaches {snr:.1f} dB and {100 * top1:.1f} % "
                   "top-1 agreement.")
        out.append("")
        out.append("| error | " + " | ".join(f"{level} dB" for level in LEVELS) + " |")
        out.append("|---|" + "---:|" * len(LEVELS))
        for kind, values in table.items():
            out.append(f"| {kind} | " + " | ".join(f"{100 * v:.1f} %" for v in values) + " |")
        out.append("")
        out.append("| model | top-1 agreement | SNR |")
        out.append("|---|---:|---:|")
        for label, (agree, level) in parts["overall"].items():
            out.append(f"| `{label}` | {_percent(agree)} | {level:.1f} dB |")
        out.append("")
        out.append("| fp32 margin | " + " | ".join(_bin_names()) + " |")
        out.append("|---|" + "---:|" * (len(MARGIN_EDGES) + 1))
        out.append("| crops | " + " | ".join(str(n) for n in parts["bin_counts"]) + " |")
        for label, values in parts["by_bin"].items():
            out.append(f"| `{label}` | " + " | ".join(_percent(v) for v in values) + " |")
        out.append("")
        out.append("| photo | crops | near-ties | "
                   + " | ".join(f"`{label}`" for label in parts["by_photo"]) + " |")
        out.append("|---|---:|---:|" + "---:|" * len(parts["by_photo"]))
        for index, photo in enumerate(parts["photos"]):
            cells = [_percent(values[index]) for values in parts["by_photo"].values()]
            out.append(f"| {photo} | {parts['photo_counts'][index]} | "
                       f"{_percent(parts['photo_near_ties'][index])} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    main()
