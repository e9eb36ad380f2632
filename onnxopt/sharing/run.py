"""One weight-sharing run: find the weights, measure their layers' inputs, choose bits and
codebook granularity, fit the codebooks and store them with in-graph decoders."""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, replace

import onnx

from onnxopt.analyses.input_moments import input_hessians
from onnxopt.analyses.weights import Weight, find_weights
from onnxopt.data.sources import DataSource
from onnxopt.ir.codebook import Codebook, emit_decoder, supported_axis
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import GraphIndex, Names, default_opset, replace_constant
from onnxopt.ir.io import PROTOBUF_SAFE_BYTES, stored_bytes
from onnxopt.runtime.fidelity import ReferenceScorer
from onnxopt.sharing.allocate import Candidate, allocate
from onnxopt.sharing.dedup import deduplicate
from onnxopt.sharing.fit import Fitted, LayerModel, fit
from onnxopt.sharing.holdout import few_row_weights
from onnxopt.sharing.holdout import optimism as held_out_optimism
from onnxopt.sharing.options import ShareOptions

log = logging.getLogger(__name__)

HESSIAN_SAMPLES = 128
ALLOCATION_BITS = range(2, 9)
BUDGET_ROUNDS = 6
ESTIMATE_TOLERANCE = 0.25
PROBE_BITS = 4
METADATA_ALLOWANCE = 2048
"""Bytes left for the pipeline and report metadata the pass manager adds to the file."""
SENSITIVITY_SAMPLES = 64


@dataclass
class Encoded:
    weight: Weight
    fitted: Fitted


class ShareRun:
    def __init__(self, options: ShareOptions, provider: str, data: DataSource | None) -> None:
        self.options = options
        self.provider = provider
        self.data = data
        self.skipped: list[str] = []
        self.stats: dict = {}

    def share(self, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """`model` (modified in place) with duplicates merged and, with `bits`/`target_ratio`,
        weights as codebooks; None when nothing changed."""
        stats = self.stats
        stats.update({"bytes_before": stored_bytes(model), **_gzip_size(model, "before")})
        changed = False
        if self.options.dedup:
            merged = deduplicate(model.graph)
            stats["deduplicated"] = len(merged.merged)
            stats["transposed_copies"] = len(merged.transposed)
            stats["dedup_bytes_saved"] = merged.bytes_saved
            changed = bool(merged.merged or merged.transposed)
        if self.options.codebooks:
            encoded = self.encode(model)
            replace_with_decoders(model, encoded)
            stats["tensors"] = [tensor_report(item) for item in encoded]
            changed = changed or bool(encoded)
        if not changed:
            return None
        remove_dead_code(model)
        stats["bytes_after"] = stored_bytes(model)
        stats.update(_gzip_size(model, "after"))
        return model

    def encode(self, model: onnx.ModelProto) -> list[Encoded]:
        """Fit codebooks for the weights of `model` (not modified)."""
        scan = find_weights(model, self.options.smallest, self.options.exclude)
        self.skipped.extend(scan.skipped)
        layers = self._layer_models(model, scan.weights)
        fits: dict[tuple, Fitted] = {}
        if self.options.bits is not None:
            chosen = {
                w.tensor: self._fixed_bits(w, layers.get(w.tensor), fits) for w in scan.weights
            }
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
                    self.options.iterations,
                    scaled=candidate.scaled,
                )
            if fits[key].book.stored_bytes < weight.value.nbytes:
                encoded.append(Encoded(weight, fits[key]))
        return encoded

    def _layer_models(self, model, weights: list[Weight]) -> dict[str, LayerModel]:
        with_layer = [w for w in weights if w.layer is not None]
        if not with_layer:
            return {}
        if not self.options.data_aware:
            return {}
        if self.data is None:
            self.skipped.append("codebooks fit to the weights only: no calibration data given")
            return {}
        hessians = input_hessians(
            model, [w.layer for w in with_layer], self.data, HESSIAN_SAMPLES, self.provider
        )
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
        if self.options.granularity == "tensor" or not channel_ok:
            return [(None, False)]
        if self.options.granularity == "channel":
            return [(axis, False)]
        if self.options.granularity == "scaled":
            return [(axis, True)]
        return [(None, False), (axis, True), (axis, False)]

    def _candidate(self, weight: Weight, bits: int, layout, layer) -> Candidate:
        axis, scaled = layout
        fitted = fit(weight, bits, axis, layer, self.options.iterations, False, scaled)
        error = fitted.output_error if fitted.output_error is not None else fitted.weight_error
        return Candidate(bits, axis, scaled, fitted.book.stored_bytes, error)

    def _fixed_bits(self, weight: Weight, layer, fits) -> Candidate:
        """The layout with the smallest error among those whose extra bytes over a per-tensor
        book are no more than going one bit up would cost (a bit per value, twice the float32
        centroids). With input moments the layouts are compared after the refit: k-means
        errors pick per-tensor books for layers whose channels differ in scale (folded
        BatchNorm), where the refit channel-scaled book is 3x more accurate."""
        bits = self.options.bits
        options = [self._candidate(weight, bits, lay, layer) for lay in self._layouts(weight)]
        one_more_bit = weight.value.size // 8 + (4 << bits)
        affordable = [o for o in options if o.nbytes - options[0].nbytes <= one_more_bit]
        if layer is None or len(affordable) == 1:
            return min(affordable, key=lambda o: o.error)
        refit = []
        for option in affordable:
            fitted = fit(
                weight, bits, option.axis, layer, self.options.iterations, True, option.scaled
            )
            fits[(weight.tensor, bits, option.axis, option.scaled)] = fitted
            refit.append(replace(option, error=fitted.output_error))
        return min(refit, key=lambda o: o.error)

    def _fit_to_budget(self, model, weights: list[Weight], layers, fits) -> list[Encoded]:
        """Allocate bits for `target_ratio`, then correct the budget by the real file size
        (serialization overhead is only estimated) until the file fits."""
        options: dict[str, list[Candidate]] = {}
        probes, optimism = None, {}
        if layers:
            probes = Probes(model, self.data, self.options, self.provider)
            few_rows = few_row_weights(layers)
            iterations = self.options.iterations
            optimism = held_out_optimism(
                model,
                few_rows,
                self.data,
                HESSIAN_SAMPLES,
                PROBE_BITS,
                iterations,
                self.provider,
            )
            self.stats["held_out_error_factor"] = {k: round(v, 3) for k, v in optimism.items()}
        for weight in weights:
            layer = layers.get(weight.tensor)
            candidates = [
                self._candidate(weight, bits, layout, layer)
                for bits in ALLOCATION_BITS
                for layout in self._layouts(weight)
            ]
            if probes is not None and layer is not None:
                candidates = probes.calibrate(weight, layer, candidates, fits)
            factor = optimism.get(weight.tensor, 1.0)
            candidates = [replace(c, error=c.error * factor) for c in candidates]
            options[weight.tensor] = [Candidate(None, None, False, weight.value.nbytes, 0.0)]
            options[weight.tensor] += candidates
        sensitivity = {} if probes is None else probes.sensitivity
        self.stats["sensitivity"] = {k: float(f"{v:.4g}") for k, v in sensitivity.items()}
        file_bytes = model_bytes(model)
        target = int(file_bytes / self.options.target_ratio) - METADATA_ALLOWANCE
        budget = target - (file_bytes - sum(w.value.nbytes for w in weights))
        measured: set[tuple] = set()
        fitting = None
        for _ in range(BUDGET_ROUNDS):
            chosen, _fits = allocate(options, sensitivity, budget)
            encoded = self._fit_chosen(weights, chosen, layers, fits)
            size = encoded_size(model, encoded)
            corrected = _measured_errors(options, chosen, fits, measured, optimism)
            if size > target:
                budget -= size - target
                continue
            fitting = encoded
            if not corrected:
                break
        self.stats["target_bytes"] = target
        if fitting is None:
            self.skipped.append(
                f"target_ratio={self.options.target_ratio:g} not reached: "
                f"{file_bytes / size:.2f}x with every weight at its smallest encoding"
            )
            return encoded
        return fitting


class Probes:
    """Per layer, one refit probe encoding (PROBE_BITS, per tensor) measured two ways: its output
    error on the layer's moments against the k-means-only encoding of the same size (how much
    error feedback and the centroid refit gain for this layer: about 25x for a classifier, far
    less for depthwise filters), and the model's output cosine loss with only that weight at the
    probe (how much this layer's error costs the model). Refit errors differ from k-means errors
    in shape as well as size, so the sensitivity is taken on the kind of encoding that is kept."""

    def __init__(
        self, model: onnx.ModelProto, data: DataSource, options: ShareOptions, provider: str
    ) -> None:
        self.model = model
        self.options = options
        self.evaluator = ReferenceScorer(model, data, SENSITIVITY_SAMPLES, provider)
        self.sensitivity: dict[str, float] = {}

    def calibrate(
        self, weight: Weight, layer: LayerModel, candidates: list[Candidate], fits: dict
    ) -> list[Candidate]:
        """`candidates` (k-means-only errors) with the errors the refit encodings will have."""
        plain = next(c for c in candidates if c.bits == PROBE_BITS and c.axis is None)
        refit = fit(weight, PROBE_BITS, None, layer, self.options.iterations)
        fits[(weight.tensor, PROBE_BITS, None, False)] = refit
        if plain.error <= 0 or refit.output_error <= 0:
            return candidates
        trial = onnx.ModelProto()
        trial.CopyFrom(self.model)
        replace_constant(
            trial.graph, weight.tensor, refit.book.decoded().astype(weight.value.dtype)
        )
        loss = max(1.0 - self.evaluator.score(trial).cosine, 0.0)
        self.sensitivity[weight.tensor] = loss / refit.output_error
        gain = min(refit.output_error / plain.error, 1.0)
        return [replace(c, error=c.error * gain) for c in candidates]


def _measured_errors(options, chosen, fits, measured: set[tuple], optimism) -> bool:
    """Put the refit output errors of the chosen encodings in place of their estimates (the
    refit gain probed at PROBE_BITS is only an estimate at other bits: for a classifier it is
    25x at 4 bits, 7x at 2); whether an estimate was off by more than ESTIMATE_TOLERANCE."""
    corrected = False
    for name, candidate in chosen.items():
        key = (name, candidate.bits, candidate.axis, candidate.scaled)
        fitted = fits.get(key)
        if key in measured or fitted is None or fitted.output_error is None:
            continue
        measured.add(key)
        error = fitted.output_error * optimism.get(name, 1.0)
        options[name] = [replace(c, error=error) if c == candidate else c for c in options[name]]
        corrected |= abs(error - candidate.error) > ESTIMATE_TOLERANCE * candidate.error
    return corrected


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
    opset, constants = default_opset(model), {}
    decoders: list[onnx.NodeProto] = []
    for item in encoded:
        name = item.weight.tensor
        if name in index.initializers:
            graph.initializer.remove(index.initializers[name])
        else:
            graph.node.remove(index.producer[name])
        dtype = item.weight.value.dtype
        book = item.fitted.book
        decoders.extend(
            emit_decoder(graph, names, name, book, dtype, opset=opset, shared=constants)
        )
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


def _gzip_size(model: onnx.ModelProto, when: str) -> dict:
    """gzip size of the model (what a download costs); skipped for models over 2 GB."""
    if stored_bytes(model) >= PROTOBUF_SAFE_BYTES:
        return {}
    return {f"gzip_bytes_{when}": len(gzip.compress(model.SerializeToString(), 6, mtime=0))}
