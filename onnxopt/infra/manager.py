"""Runs a pipeline: each pass on a copy, then the gates; a pass that fails them is rolled back.

The steps a pass asks for (`Pass.prerequisites`, e.g. quant's cleanup) run right before it as
passes of their own, unless the pipeline just ran them.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from onnxopt import __version__
from onnxopt.analyses.stats import model_stats
from onnxopt.data.holdout import HOLDOUT_FRACTION, split_holdout
from onnxopt.data.sources import DataSource, RandomSource, input_specs
from onnxopt.errors import CheckFailed, OnnxoptError, PassCrashed
from onnxopt.infra import checks
from onnxopt.infra.instrument import Instrument, PassResources
from onnxopt.infra.pass_base import Pass, PassContext
from onnxopt.infra.pipeline import Pipeline, PipelineStep, parse_pipeline
from onnxopt.infra.progress import PassProgress, no_progress, reported_reads
from onnxopt.infra.records import PassRecord, RunReport, write_metadata
from onnxopt.infra.registry import get_pass_class
from onnxopt.ir.graph import default_opset
from onnxopt.ir.shapes import check_tensor_sizes
from onnxopt.runtime.session import try_session

log = logging.getLogger(__name__)

GATE_CALIBRATION_SAMPLES = 64
"""When the calibration data are too small to split, the gates compare on its first samples
only: the passes fitted to that data, so more of it proves little."""


@dataclass(frozen=True)
class FidelityData:
    """Where the manager measures fidelity, what passes fit on, and what to tell the user."""

    measure: DataSource
    fit: DataSource | None
    note: str
    in_sample: bool


class PassManager:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        provider: str = "cpu",
        seed: int = 0,
        strict: bool = False,
        calibration: DataSource | None = None,
        validation: DataSource | None = None,
        holdout: float = HOLDOUT_FRACTION,
        instruments: Sequence[Instrument] = (),
        progress: PassProgress = no_progress,
    ) -> None:
        self.pipeline = pipeline
        self.passes: list[Pass] = [
            get_pass_class(step.name)(step.options) for step in pipeline.steps
        ]
        self.provider = provider
        self.seed = seed
        self.strict = strict
        self.calibration = calibration
        self.validation = validation
        self.holdout = holdout
        self.instruments = [PassResources(), *instruments]
        self.progress = progress

    def run(self, model: onnx.ModelProto) -> tuple[onnx.ModelProto, RunReport]:
        """Optimize `model` (left unmodified) and return the new model with its report."""
        self._check_preconditions(model)
        plan = self._fidelity_data(model)
        data = plan.measure
        report = RunReport(
            version=__version__,
            pipeline=self.pipeline.to_text(full=True),
            provider=self.provider,
            seed=self.seed,
            calibration=self.calibration.description if self.calibration else None,
            validation=data.description,
            fidelity_on=plan.note,
            fidelity_in_sample=plan.in_sample,
            checker_level=checks.strongest_passing_level(model),
            before=model_stats(model),
        )
        start = try_session(model, self.provider)
        if start.session is None:
            raise OnnxoptError(f"the input model does not load in onnxruntime: {start.error}")
        ctx = PassContext(
            provider=self.provider,
            seed=self.seed,
            calibration=plan.fit,
            original=model,
            progress=self.progress,
        )
        current, session, versus_input = self._run_steps(model, start.session, ctx, data, report)
        report.after = model_stats(current)
        if versus_input is not None:
            report.fidelity = copy.deepcopy(versus_input)  # the only accepted change: its gate
        else:
            limit = self._gate_samples(data)
            final = checks.measure_fidelity(start.session, session, data, limit)[0]
            report.fidelity = final.to_dict() if final else None
        output = copy.deepcopy(current) if current is model else current
        write_metadata(output, report)
        return output, report

    def _run_steps(self, model, start, ctx, data, report):
        """Each pipeline step, after the steps it asks for; returns the accepted model, its
        session, and the gate's fidelity when the only accepted change was compared to `start`."""
        current, session = model, start
        versus_input = None  # the gate's fidelity when it compared to the input model
        ran: list[PipelineStep] = []
        for step, pass_ in zip(self.pipeline.steps, self.passes, strict=True):
            required = self._prerequisites(pass_, current, ran)
            for run_step, runner, required_by in [*required, (step, pass_, "")]:
                record = PassRecord(
                    name=runner.name,
                    step=run_step.to_text(),
                    required_by=required_by,
                    before=report.after or report.before,
                )
                before = session
                current, session = self._run_one(
                    runner, current, session, ctx, data, record, ran, report
                )
                if session is not before:
                    versus_input = record.fidelity if before is start else None
                report.passes.append(record)
                report.after = record.after
                ran.append(run_step)
        return current, session, versus_input

    def _prerequisites(
        self, pass_: Pass, model: onnx.ModelProto, ran: list[PipelineStep]
    ) -> list[tuple[PipelineStep, Pass, str]]:
        """The steps `pass_` asks for right before it on `model`, unless they just ran."""
        wanted = [s for text in pass_.prerequisites(model) for s in parse_pipeline(text).steps]
        if not wanted or ran[-len(wanted) :] == wanted:
            return []
        return [(step, get_pass_class(step.name)(step.options), pass_.name) for step in wanted]

    def _run_one(self, pass_, model, session, ctx, data, record, ran, report):
        previous = [step.name for step in ran]
        for instrument in self.instruments:
            instrument.before_pass(pass_.name)
        snapshot = ctx.analyses.snapshot()
        try:
            step_ctx = dataclasses.replace(
                ctx, calibration=reported_reads(ctx.calibration, ctx.progress, pass_.name)
            )
            result = pass_.run(copy.deepcopy(model), step_ctx)
        except OnnxoptError:
            raise
        except Exception as exc:
            for instrument in self.instruments:
                instrument.pass_failed(pass_.name, exc)
            raise PassCrashed(pass_.name, previous, exc) from exc
        for instrument in self.instruments:
            instrument.after_run(pass_.name, record)
        record.stats, record.skipped = result.stats, result.skipped
        record.expected = pass_.fidelity().describe()
        accepted_model, accepted_session = model, session
        if result.changed:
            failure, new_session = self._gate(
                pass_, model, result.model, session, data, record, report
            )
            if failure is None:
                record.status = "changed"
                accepted_model, accepted_session = result.model, new_session
                ctx.analyses.invalidate(pass_.preserves)
            else:
                record.status, record.reason = "rolled back", failure
                ctx.analyses.restore(snapshot)
                log.warning("pass '%s' rolled back: %s", pass_.name, failure)
                if self.strict:
                    raise CheckFailed(f"pass '{pass_.name}' rolled back (--strict): {failure}")
        record.after = model_stats(accepted_model)
        for instrument in self.instruments:
            instrument.after_pass(pass_.name, record)
        return accepted_model, accepted_session

    def _gate(self, pass_, before, candidate, session, data, record, report):
        """Check the candidate; return (failure reason or None, its session)."""
        error = checks.interface_error(before, candidate)
        error = error or checks.checker_error(candidate, report.checker_level)
        if error:
            return error, None
        outcome = try_session(candidate, self.provider)
        if outcome.session is None:
            return outcome.error, None
        fidelity, error = checks.measure_fidelity(
            session, outcome.session, data, self._gate_samples(data)
        )
        if error:
            return error, None
        record.fidelity = fidelity.to_dict()
        expected = pass_.fidelity()
        error = checks.fidelity_error(fidelity, expected)
        if error and expected.max_rel_error is not None:
            cosine_only = dataclasses.replace(expected, max_rel_error=None)
            if checks.fidelity_error(fidelity, cosine_only) is None:
                noise, reason = checks.within_float_noise(
                    fidelity, expected, before, data, self.provider, self._gate_samples(data)
                )
                if noise:
                    record.expected = f"{record.expected}; {reason}"
                    error = None
        return error, outcome.session

    def _check_preconditions(self, model: onnx.ModelProto) -> None:
        """Refuse before any work when a pass cannot run at all (opset, missing data) or the
        model declares a tensor that cannot fit in memory."""
        check_tensor_sizes(model)
        ctx = PassContext(calibration=self.calibration)
        for pass_ in self.passes:
            opset = default_opset(model)
            for _, prerequisite, _ in self._prerequisites(pass_, model, []):
                prerequisite.check_opset(model, opset)
                prerequisite.check_applicable(model, ctx)
                opset = prerequisite.opset_after(opset)
            pass_.check_opset(model, opset)
            pass_.check_applicable(model, ctx)

    def _gate_samples(self, data: DataSource) -> int | None:
        return GATE_CALIBRATION_SAMPLES if data is self.calibration else None

    def _fidelity_data(self, model: onnx.ModelProto) -> FidelityData:
        """--val when given; else a holdout of --calib that no pass sees; else random inputs.

        Passes never see the data fidelity is measured on, unless the calibration data are too
        small to split: then the numbers are in-sample and labelled so.
        """
        if self.validation is not None:
            note = f"--val: {self.validation.description}"
            return FidelityData(self.validation, self.calibration, note, False)
        if self.calibration is not None:
            split = split_holdout(self.calibration, fraction=self.holdout, seed=self.seed)
            if split.in_sample:
                log.warning("fidelity is %s", split.note)
                return FidelityData(self.calibration, self.calibration, split.note, True)
            return FidelityData(split.holdout, split.fit, split.note, False)
        note = "seeded random inputs (no --calib or --val): outputs checked, fidelity unknown"
        return FidelityData(self._synthetic_data(model), None, note, False)

    def _synthetic_data(self, model: onnx.ModelProto) -> DataSource:
        log.info("no validation data given: checking each pass on seeded random inputs")
        return RandomSource(input_specs(model), seed=self.seed)
