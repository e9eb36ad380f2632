"""One quantization run: plan, calibrate, choose parameters, rewrite, refine.

`QuantRun.quantize` takes a prepared float model (BatchNorm folded, topologically sorted) and
returns its QDQ version, or None when nothing can be quantized; `stats` and `skipped` collect
what the pass reports.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import onnx

from onnxopt.analyses.input_moments import collect_layers
from onnxopt.data.sources import DataSource
from onnxopt.ir.edit import remove_dead_code
from onnxopt.ir.graph import default_opset
from onnxopt.ir.opset import OpsetConversionError, upgrade_opset
from onnxopt.ir.qdq import ensure_node_names
from onnxopt.ir.shapes import infer_shapes
from onnxopt.quantization.bias_correction import CORRECTED_OPS, measure_shift
from onnxopt.quantization.build import build_qdq
from onnxopt.quantization.calibrate import EQUALIZE_SAMPLES, Calibrator, channel_absmax
from onnxopt.quantization.dynamic import (
    build_dynamic,
    choose_activations,
    plan_dynamic,
    quantize_weights,
    search_dynamic_fallback,
)
from onnxopt.quantization.equalize import (
    Rescaler,
    clipped_factors,
    equalization_factors,
    find_scale_groups,
    usable,
)
from onnxopt.quantization.fallback import (
    SENSITIVITY_SAMPLES,
    FallbackResult,
    search_coarse_to_fine,
    search_fallback,
    tensor_units,
)
from onnxopt.quantization.options import QuantOptions
from onnxopt.quantization.params import ActivationParams, activation_params
from onnxopt.quantization.plan import Plan, PlanConfig, make_plan
from onnxopt.runtime.fidelity import ReferenceScorer

log = logging.getLogger(__name__)

BIAS_CORRECTION_SAMPLES = 128


def activation_dtype(activation_type: str, provider: str) -> np.dtype:
    if activation_type == "auto":
        return np.dtype(np.int8 if provider == "cuda" else np.uint8)
    return np.dtype(activation_type)


class QuantRun:
    def __init__(self, options: QuantOptions, provider: str, data: DataSource) -> None:
        self.options = options
        self.provider = provider
        self.data = data
        self.dtype = activation_dtype(options.activation_type, provider)
        self.stats: dict = {}
        self.skipped: list[str] = []
        self.hessians: dict[str, np.ndarray] = {}
        self.offsets: dict[str, np.ndarray] = {}
        self.rounded: dict = {}
        self.frozen: frozenset[str] = frozenset()  # codebook weights: no GPTQ, no input rescaling
        self.weight_peaks: dict[str, np.ndarray] = {}  # see `shared.weight_peaks`

    def quantize(self, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """The QDQ version of the prepared float `model`, or None if nothing is quantizable."""
        ensure_node_names(model.graph)
        mode, why = choose_activations(model, self.options.activations)
        self.stats.update({"activations": mode, "activations_reason": why})
        if mode == "dynamic":
            if self.options.activations == "auto":
                self.skipped.append(f"static activations not used: {why}")
            return self.quantize_dynamic(model)
        model, per_channel = self._per_channel_opset(model)
        if self.options.equalize:
            model = self.equalize(model)
        dtypes = _dtypes(model)
        config = PlanConfig(
            self.provider,
            per_channel,
            self.options.attention,
            self.options.exclude,
            absorb_activations=not self.options.symmetric_activations,
            float_stem=self.options.float_stem,
        )
        plan = make_plan(model, dtypes, config)
        self.skipped.extend(plan.skipped)
        if not plan.weighted:
            self.skipped.append(
                "nothing quantized: no Conv/Gemm/MatMul with a float32 constant weight"
            )
            return None
        calibrator = Calibrator(model, self.data, self.options, self.provider)
        self.refine(model, plan, calibrator)
        quantized = self.assemble(model, plan, calibrator)
        targets = self.fallback_targets()
        if targets is not None:
            quantized, plan = self.fallback(
                model, dtypes, config, plan, calibrator, quantized, targets
            )
        self.stats.update(
            {
                "method": self.options.method,
                "activation_type": self.dtype.name,
                "per_channel": per_channel,
                "calibration_samples": calibrator.samples,
                "quantized_ops": plan.counts(),
                "absorbed_activations": len(plan.fused),
                "weights": len(plan.weighted),
            }
        )
        return quantized

    def quantize_dynamic(self, model: onnx.ModelProto) -> onnx.ModelProto | None:
        """MatMul/Gemm with constant weights in dynamic int8 (see `dynamic`); None if none."""
        if default_opset(model) < 11:
            self.skipped.append("dynamic int8 needs opset 11 (DynamicQuantizeLinear)")
            return None
        if self.options.equalize:
            model = self.equalize(model)
        plan = plan_dynamic(
            model, _dtypes(model), self.options.exclude, self.frozen, self.options.int8_tables
        )
        self.skipped.extend(plan.skipped)
        if not plan.nodes:
            self.skipped.append("nothing quantized: no MatMul/Gemm with a float32 constant weight")
            return None
        hessians: dict[str, np.ndarray] = {}
        if self.options.rounding == "gptq":
            calibrator = Calibrator(model, self.data, self.options, self.provider)
            hessians = calibrator.ensure([], collect_layers(model, sorted(plan.nodes)))
            self.stats["gptq_layers"] = len(hessians)
        weights = quantize_weights(model, plan, self.options.per_channel, hessians)
        kept: frozenset[str] = frozenset()
        if self.options.target_cosine is not None or self.options.target_top1 is not None:
            result = search_dynamic_fallback(
                model, plan, weights, self.data, self.options, self.provider
            )
            kept = result.nodes
            self._report_fallback(result, plan.units())
        quantized = build_dynamic(model, plan, weights, kept)
        remove_dead_code(quantized)
        counts = plan.counts()
        for name in kept:
            counts[plan.nodes[name].op_type if name in plan.nodes else "Gather"] -= 1
        self.stats.update(
            {
                "per_channel": self.options.per_channel,
                "quantized_ops": counts,
                "weights": len(plan.nodes) - len(kept & plan.nodes.keys()),
                "int8_tables": len(plan.tables) - len(kept & plan.tables.keys()),
            }
        )
        return quantized

    def equalize(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """Channel equalization (see `equalize`) on a copy of `model`."""
        info = infer_shapes(model)
        ranks = {name: len(shape) for name, shape in info.shapes.items() if shape is not None}
        groups = [
            g
            for g in usable(find_scale_groups(model, ranks))
            if not self._rescales_frozen(model, g)
        ]
        self.stats["equalized_groups"] = len(groups)
        self.stats["equalized_through_clip"] = sum(1 for g in groups if g.clipped)
        if not groups:
            return model
        axes = {t: g.axis for g in groups for t in g.tensors}
        peaks = channel_absmax(
            model, axes, self.data, provider=self.provider, max_samples=EQUALIZE_SAMPLES
        )
        equalized = onnx.ModelProto()
        equalized.CopyFrom(model)
        rescaler = Rescaler(equalized)
        for group in groups:
            if group.clipped:
                clipped = np.max([peaks[t] for t in group.clipped], axis=0)
                factors = clipped_factors(group, clipped)
            else:
                activation = np.max([peaks[t] for t in group.tensors], axis=0)
                factors = equalization_factors(group, activation, rescaler.consumer_peaks(group))
            rescaler.apply(group, factors)
        remove_dead_code(equalized)
        return equalized

    def _rescales_frozen(self, model, group) -> bool:
        """Whether the group rescales a frozen (codebook) weight: renamed or rescaled along its
        inputs, its codes would no longer match the codebook."""
        touched = {name for name, _ in (*group.producers, *group.consumers)}
        return any(
            node.name in touched and len(node.input) > 1 and node.input[1] in self.frozen
            for node in model.graph.node
        )

    def refine(self, model, plan: Plan, calibrator: Calibrator) -> None:
        """Calibrate; gather GPTQ's input moments and the bias corrections the options ask for."""
        gptq = self.options.rounding == "gptq"
        rounded = [n for n, w in plan.weighted.items() if w.weight not in self.frozen]
        layers = collect_layers(model, sorted(rounded)) if gptq else []
        self.hessians = calibrator.ensure(plan.calibration_tensors(), layers)
        if gptq:
            self.stats["gptq_layers"] = len(self.hessians)
        if self.options.bias_correction:
            corrected = {
                n: w.weight for n, w in plan.weighted.items() if w.op_type in CORRECTED_OPS
            }
            candidate = self.assemble(model, plan, calibrator)
            self.offsets = measure_shift(
                candidate, model, corrected, self.data, BIAS_CORRECTION_SAMPLES, self.provider
            )
            self.stats["bias_corrected_layers"] = len(self.offsets)

    def assemble(self, model, plan: Plan, calibrator: Calibrator) -> onnx.ModelProto:
        """The QDQ model of `plan` with the refinements gathered so far."""
        calibrator.ensure(plan.calibration_tensors())
        params = self.params(plan, calibrator)
        quantized, result = build_qdq(
            model, plan, params, self.offsets, self.hessians, self.rounded, self.weight_peaks
        )
        self.stats["quantize_nodes"] = result.quantize_nodes
        self.stats["dequantize_nodes"] = result.dequantize_nodes
        remove_dead_code(quantized)
        return quantized

    def fallback_targets(self) -> tuple[float | None, float | None] | None:
        """(target cosine, target top-1) of the fallback search, or None for no search: the
        options' targets, else the gate's `min_cosine` plus the `auto_fallback` margin."""
        options = self.options
        if options.target_cosine is not None or options.target_top1 is not None:
            return options.target_cosine, options.target_top1
        if options.auto_fallback is None:
            return None
        return min(1.0, options.min_cosine + options.auto_fallback), None

    def fallback(self, model, dtypes, config, plan, calibrator, quantized, targets):
        """Keep the most sensitive nodes float until the fidelity `targets` are met."""
        # Judged on calibration samples: the manager's fidelity data stays unseen by passes.
        data = self.data
        plans: dict[frozenset[str], Plan] = {frozenset(): plan}

        def build(kept: frozenset[str]) -> onnx.ModelProto:
            if kept not in plans:
                plans[kept] = make_plan(
                    model, dtypes, replace(config, keep_float=tuple(sorted(kept)))
                )
            return quantized if not kept else self.assemble(model, plans[kept], calibrator)

        ranking = ReferenceScorer(model, data, SENSITIVITY_SAMPLES, self.provider)
        # a target the user set is judged on all the data; the automatic one guards the gate,
        # which measures on other data anyway: the ranking's samples are enough, and cheap
        explicit = self.options.target_cosine is not None or self.options.target_top1 is not None
        judge = ranking if not explicit else ReferenceScorer(model, data, None, self.provider)

        def search(units: dict[str, frozenset[str]]) -> FallbackResult:
            needed = {
                t
                for nodes in units.values()
                for t in self._plan_tensors(model, dtypes, config, nodes)
            }
            calibrator.ensure(sorted(needed))
            return search_fallback(units, build, ranking, judge, *targets)

        roots = [t for t in sorted(plan.roots) if t not in plan.constants]
        units = tensor_units(model.graph, plan.nodes, roots)
        result, units = search_coarse_to_fine(model.graph, units, search)
        kept = result.nodes
        self._report_fallback(result, units)
        self.stats["fallback"]["targets"] = {
            "cosine": targets[0],
            "top1": targets[1],
            "judged_on_at_most": None if explicit else SENSITIVITY_SAMPLES,  # None: all samples
        }
        return build(kept), plans.get(kept, plan)

    def _report_fallback(self, result, units: dict[str, frozenset[str]]) -> None:
        self.stats["fallback"] = {
            "kept_float": [
                {"tensor": t, "nodes": sorted(units[t]), "cosine_gain": g}
                for t, g in result.kept_float
            ],
            "float_nodes": len(result.nodes),
            "measured_on": "calibration samples (in-sample: the search chose on them)",
            "cosine": round(result.score.cosine, 6),
            "top1": None if result.score.top1 is None else round(result.score.top1, 6),
            "target_met": result.met,
            "evaluations": result.evaluations,
        }
        if not result.met:
            self.skipped.append(
                "fallback: the fidelity target is not met even with every node float"
            )

    @staticmethod
    def _plan_tensors(model, dtypes, config: PlanConfig, nodes: frozenset[str]) -> list[str]:
        """Tensors needing ranges when `nodes` stay float."""
        kept = replace(config, keep_float=tuple(sorted(nodes)))
        return make_plan(model, dtypes, kept).calibration_tensors()

    def params(self, plan: Plan, calibrator: Calibrator) -> dict[str, ActivationParams]:
        params = {}
        for tensor in plan.roots:
            root = plan.root(tensor)
            if root in params:
                continue
            if root in plan.constants:
                value = plan.constants[root]
                lo, hi = float(value.min()), float(value.max())
            else:
                lo, hi = calibrator.ranges[root]
            params[root] = activation_params(
                lo, hi, self.dtype, symmetric=self.options.symmetric_activations
            )
        return params

    def _per_channel_opset(self, model) -> tuple[onnx.ModelProto, bool]:
        """(model, per_channel): per-channel DQ needs opset 13; convert older models."""
        if not self.options.per_channel or default_opset(model) >= 13:
            return model, self.options.per_channel
        try:
            converted = upgrade_opset(model, 13)
        except OpsetConversionError as exc:
            self.skipped.append(f"per-channel weights need opset 13 ({exc}); weights per tensor")
            return model, False
        self.stats["converted_opset"] = [default_opset(model), 13]
        return converted, True


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    info = infer_shapes(model)
    dtypes = dict(info.dtypes)
    for value in model.graph.input:
        dtypes.setdefault(value.name, value.type.tensor_type.elem_type)
    return dtypes
