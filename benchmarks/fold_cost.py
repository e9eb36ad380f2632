"""What ONNX Runtime's constant folding adds to session creation, with no decoding at all.

Run from the repository root: ``python -m benchmarks.fold_cost``. `share` decodes its
codebooks in the graph and ONNX Runtime folds the decoders when it creates the session. This
script measures the floor of that cost on MobileNetV2: every Conv/Gemm weight read through
one, then three, `Reshape` nodes to its own shape (nothing to compute, only nodes to fold),
and through a lossless `GatherElements` lookup (int32 indices into the weight's sorted
distinct values, the simplest decoder there is). Times are the median of interleaved session
creations over fp32's (`bench_share.load_ratios`). Writes its section of
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from benchmarks.bench_share import load_ratios
from benchmarks.mobilenet_v2 import export_mobilenet_v2
from benchmarks.results_file import write_section as write_results_section

BEGIN, END = "<!-- fold_cost:begin -->", "<!-- fold_cost:end -->"


def weights_through(model: onnx.ModelProto, decoder) -> onnx.ModelProto:
    """A copy of `model` whose Conv/Gemm weights are read through `decoder(name, weight)`,
    which returns (initializers, nodes, output name)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    added = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in inits:
            name = node.input[1]
            tensors, nodes, output = decoder(name, numpy_helper.to_array(inits[name]))
            model.graph.initializer.remove(inits.pop(name))
            model.graph.initializer.extend(tensors)
            added.extend(nodes)
            node.input[1] = output
    nodes = added + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def reshapes(count: int):
    def decoder(name: str, weight: np.ndarray):
        shape = numpy_helper.from_array(np.array(weight.shape, np.int64), f"{name}.shape")
        tensors = [numpy_helper.from_array(weight, name), shape]
        nodes, current = [], name
        for i in range(count):
            nodes.append(helper.make_node("Reshape", [current, shape.name], [f"{name}.r{i}"]))
            current = f"{name}.r{i}"
        return tensors, nodes, current

    return decoder


def lookup(name: str, weight: np.ndarray):
    values, indices = np.unique(weight, return_inverse=True)
    tensors = [
        numpy_helper.from_array(values.astype(weight.dtype).reshape(1, -1), f"{name}.book"),
        numpy_helper.from_array(indices.reshape(1, -1).astype(np.int32), f"{name}.codes"),
        numpy_helper.from_array(np.array(weight.shape, np.int64), f"{name}.shape"),
    ]
    gather = [f"{name}.book", f"{name}.codes"]
    nodes = [
        helper.make_node("GatherElements", gather, [f"{name}.flat"], axis=1),
        helper.make_node("Reshape", [f"{name}.flat", f"{name}.shape"], [f"{name}.decoded"]),
    ]
    return tensors, nodes, f"{name}.decoded"


VARIANTS = {
    "one Reshape per weight": reshapes(1),
    "three Reshapes per weight": reshapes(3),
    "GatherElements + Reshape per weight (lossless lookup)": lookup,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved session creations")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fold-cost-") as tmp:
        base = export_mobilenet_v2(Path(tmp) / "mobilenet_v2.onnx")
        model = onnx.load(base)
        paths = []
        for i, decoder in enumerate(VARIANTS.values()):
            path = Path(tmp) / f"variant{i}.onnx"
            onnx.save(weights_through(model, decoder), path)
            paths.append(path)
        ratios = load_ratios(base, paths, args.rounds)
    rows = "\n".join(
        f"| {name} | {ratio:.2f}x |" for name, ratio in zip(VARIANTS, ratios, strict=True)
    )
    text = f"""## Constant folding at session load (the floor under `share`'s load time)

`python -m benchmarks.fold_cost`: MobileNetV2 fp32 with every Conv/Gemm weight read through
nodes that ONNX Runtime folds at session creation; median of {args.rounds} interleaved
session creations over the plain model's.

| weights read through | session creation vs fp32 |
|---|---:|
{rows}"""
    write_results_section(BEGIN, END, text)
    print(text)


if __name__ == "__main__":
    main()
