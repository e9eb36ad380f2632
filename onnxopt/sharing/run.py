"""One weight-sharing run: find the weights, measure their layers' inputs, choose bits and
codebook granularity, fit the codebooks and store them with in-graph decoders."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx

from onnxopt.analyses.input_moments import input_hessians
from onnxopt.analyses.weights import Weight, find_weights
from onnxopt.data import DataSource
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import GraphIndex, Names, replace_constant
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.quantization.fallback import Evaluator
from onnxopt.sharing.allocate import Candidate, allocate
from onnxopt.sharing.codebook import Codebook, emit_decoder, supported_axis
from onnxopt.sharing.fit import Fitted, LayerModel, fit

log = logging.getLogger(__name__)

HESSIAN_SAMPLES = 128
ALLOCATION_BITS = range(2, 9)
BUDGET_ROUNDS = 4
PROBE_BITS = 3
METADATA_ALLOWANCE = 2048
"""Bytes left for the pipeline and report metadata the pass manager adds to the file."""
SENSITIVITY_SAMPLES = 32


@dataclass(frozen=True)
class ShareSettings:
    bits: int | None
    target_ratio: float | None
    granularity: str
    data_aware: bool
    min_elements: int
    exclude: tuple[str, ...]
    iterations: int


@dataclass
class Encoded:
    weight: Weight
    fitted: Fitted


@dataclass
class ShareRun:
    settings: ShareSettings
    data: DataSource | None
    skipped: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def encode(self, model: onnx.ModelProto) -> list[Encoded]:
        """Fit codebooks for the weights of `model` (not modified)."""
        scan = find_weights(model, self.settings.min_elements, self.settings.exclude)
        self.skipped.extend(scan.skipped)
        layers = self._layer_models(model, scan.weights)
        fits: dict[tuple, Fitted] = {}
        if self.settings.bits is not None:
            chosen = {w.tensor: self._fixed_bits(w, layers.get(w.tensor)) for w in scan.weights}
            return self._fit_chosen(scan.weights, chosen, layers, fits)
        return self._fit_to_budget(model, scan.weights, layers, fits)

    def _fit_chosen(self, weights, chosen, layers, fits) -> list[Encoded]:
        """Final (refined) codebooks of the chosen candidates; `fits` caches them."""
        encoded = []
        for weight in weights:
            candidate = chosen[weight.tensor]
            if candidate.bits is None:
                continue
            key = (weight.tensor, candidate.bits, candidate.axis, candidate.scaled)
            if key not in fits:
                layer = layers.get(weight.tensor)
                fits[key] = fit(
                    weight,
                    candidate.bits,
                    candidate.axis,
                    layer,
                    self.settings.iterations,
                    scaled=candidate.scaled,
                )
            if fits[key].book.stored_bytes < weight.value.nbytes:
                encoded.append(Encoded(weight, fits[key]))
        return encoded

    def _layer_models(self, model, weights: list[Weight]) -> dict[str, LayerModel]:
        with_layer = [w for w in weights if w.layer is not None]
        if not with_layer:
            return {}
        if not self.settings.data_aware:
            return {}
        if self.data is None:
            self.skipped.append("codebooks fit to the weights only: no calibration data given")
            return {}
        hessians = input_hessians(model, [w.layer for w in with_layer], self.data, HESSIAN_SAMPLES)
        self.stats["data_aware_layers"] = len(hessians)
        return {
            w.tensor: LayerModel(w, hessians[w.layer.node])
            for w in with_layer
            if w.layer.node in hessians
        }

    def _layouts(self, weight: Weight) -> list[tuple[int | None, bool]]:
        """(axis, scaled) codebook layouts allowed for `weight`."""
        axis = weight.axis
        channel_ok = axis is not None and supported_axis(weight.value.shape, axis)
        channel_ok = channel_ok and weight.value.shape[axis] > 1
        if self.settings.granularity == "tensor" or not channel_ok:
            return [(None, False)]
        if self.settings.granularity == "channel":
            return [(axis, False)]
        if self.settings.granularity == "scaled":
            return [(axis, True)]
        return [(None, False), (axis, True), (axis, False)]

    def _candidate(self, weight: Weight, bits: int, layout, layer) -> Candidate:
        axis, scaled = layout
        fitted = fit(weight, bits, axis, layer, self.settings.iterations, False, scaled)
        error = fitted.output_error if fitted.output_error is not None else fitted.weight_error
        return Candidate(bits, axis, scaled, fitted.book.stored_bytes, error)

    def _fixed_bits(self, weight: Weight, layer) -> Candidate:
        """Per channel only where its extra centroids cost less than one more bit per value."""
        bits = self.settings.bits
        options = [self._candidate(weight, bits, lay, layer) for lay in self._layouts(weight)]
        tensor = options[0]
        one_more_bit = weight.value.size // 8
        best = tensor
        for option in options[1:]:
            if option.error < best.error and option.nbytes - tensor.nbytes <= one_more_bit:
                best = option
        return best

    def _fit_to_budget(self, model, weights: list[Weight], layers, fits) -> list[Encoded]:
        """Allocate bits for `target_ratio`, then correct the budget by the real file size
        (serialization overhead is only estimated) until the file fits."""
        options: dict[str, list[Candidate]] = {}
        for weight in weights:
            layer = layers.get(weight.tensor)
            options[weight.tensor] = [Candidate(None, None, False, weight.value.nbytes, 0.0)] + [
                self._candidate(weight, bits, layout, layer)
                for bits in ALLOCATION_BITS
                for layout in self._layouts(weight)
            ]
        sensitivity = self._sensitivities(model, weights, layers, options)
        file_bytes = model_bytes(model)
        target = int(file_bytes / self.settings.target_ratio) - METADATA_ALLOWANCE
        budget = target - (file_bytes - sum(w.value.nbytes for w in weights))
        for _ in range(BUDGET_ROUNDS):
            chosen, _fits = allocate(options, sensitivity, budget)
            encoded = self._fit_chosen(weights, chosen, layers, fits)
            size = encoded_size(model, encoded)
            if size <= target:
                break
            budget -= size - target
        self.stats["target_bytes"] = target
        if size > target:
            self.skipped.append(
                f"target_ratio={self.settings.target_ratio:g} not reached: "
                f"{file_bytes / size:.2f}x with every weight at its smallest encoding"
            )
        return encoded

    def _sensitivities(self, model, weights, layers, options) -> dict[str, float]:
        """How much each layer's error hurts the model's output: the output's cosine loss with
        only that weight at the probe encoding, per unit of its layer error (needs data)."""
        if self.data is None or not self.settings.data_aware:
            return {}
        evaluator = Evaluator(model, self.data, SENSITIVITY_SAMPLES)
        sensitivity = {}
        for weight in weights:
            probe = next(
                c for c in options[weight.tensor] if c.bits == PROBE_BITS and c.axis is None
            )
            if probe.error <= 0:
                continue
            fitted = fit(
                weight,
                PROBE_BITS,
                None,
                layers.get(weight.tensor),
                self.settings.iterations,
                refine=False,
            )
            trial = onnx.ModelProto()
            trial.CopyFrom(model)
            replace_constant(
                trial.graph, weight.tensor, fitted.book.decoded().astype(weight.value.dtype)
            )
            loss = max(1.0 - evaluator.score(trial).cosine, 0.0)
            sensitivity[weight.tensor] = loss / probe.error
        self.stats["sensitivity"] = {k: float(f"{v:.4g}") for k, v in sensitivity.items()}
        return sensitivity


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size (estimated beyond protobuf's 2 GB limit)."""
    estimate = stored_bytes(model)
    return model.ByteSize() if estimate < PROTOBUF_SAFE_BYTES else estimate


def encoded_size(model: onnx.ModelProto, encoded: list[Encoded]) -> int:
    trial = onnx.ModelProto()
    trial.CopyFrom(model)
    replace_with_decoders(trial, encoded)
    remove_dead_code(trial)
    return model_bytes(trial)


def replace_with_decoders(model: onnx.ModelProto, encoded: list[Encoded]) -> None:
    """Swap each encoded weight's constant for its codebook decoder, in place."""
    graph = model.graph
    index = GraphIndex(graph)
    names = Names(graph)
    decoders: list[onnx.NodeProto] = []
    for item in encoded:
        name = item.weight.tensor
        if name in index.initializers:
            graph.initializer.remove(index.initializers[name])
        else:
            graph.node.remove(index.producer[name])
        dtype = item.weight.value.dtype
        decoders.extend(emit_decoder(graph, names, name, item.fitted.book, dtype))
    for position, node in enumerate(decoders):
        graph.node.insert(position, node)


def tensor_report(item: Encoded) -> dict:
    book: Codebook = item.fitted.book
    return {
        "tensor": item.weight.tensor,
        "shape": list(item.weight.value.shape),
        "bits": book.bits,
        "codebooks": _layout_name(book),
        "centroids": int(book.centroids.size),
        "weight_error": round(item.fitted.weight_error, 6),
        "output_error": None
        if item.fitted.output_error is None
        else round(item.fitted.output_error, 6),
        "bytes_before": int(item.weight.value.nbytes),
        "bytes_after": int(book.stored_bytes),
    }


def _layout_name(book: Codebook) -> str:
    if book.axis is None:
        return "tensor"
    return f"{'scaled' if book.scales is not None else 'channel'}(axis={book.axis})"
