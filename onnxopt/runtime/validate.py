"""`validate`: two models on the same data, judged against `Thresholds`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from onnxopt.data.sources import DataSource, ImagePreprocess, input_specs, open_data
from onnxopt.errors import InputError
from onnxopt.ir.io import load_model
from onnxopt.ir.shapes import check_tensor_sizes
from onnxopt.runtime.fidelity import FidelityReport, compare_sessions
from onnxopt.runtime.session import make_session, provider_name, session_options


@dataclass(frozen=True)
class Thresholds:
    """Gates for `validate`; None skips a gate. Every output must meet every gate."""

    min_cosine: float | None = None
    """Lowest acceptable cosine similarity."""
    min_top1: float | None = None
    """Lowest acceptable top-1 agreement (fraction, 0..1) on 2-D logits outputs."""
    max_abs: float | None = None
    """Largest acceptable absolute error."""

    def given(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def threshold_failures(report: FidelityReport, thresholds: Thresholds) -> list[str]:
    """One line per output and gate missed. NaN never passes a gate."""
    failures = []
    for out in report.outputs:
        if thresholds.min_cosine is not None and not out.cosine >= thresholds.min_cosine:
            failures.append(
                f"output '{out.name}' cosine {out.cosine:.6f} < {thresholds.min_cosine:g}"
            )
        if thresholds.max_abs is not None and not out.max_abs <= thresholds.max_abs:
            failures.append(
                f"output '{out.name}' max abs error {out.max_abs:.4g} > {thresholds.max_abs:g}"
            )
        if (
            thresholds.min_top1 is not None
            and out.top1 is not None
            and not out.top1 >= thresholds.min_top1
        ):
            failures.append(
                f"output '{out.name}' top-1 agreement {out.top1:.4f} < {thresholds.min_top1:g}"
            )
    if thresholds.min_top1 is not None and all(o.top1 is None for o in report.outputs):
        failures.append("top-1 agreement not measured: no output is 2-D logits")
    return failures


ModelArg = str | os.PathLike | onnx.ModelProto


def validate_models(
    reference: ModelArg,
    candidate: ModelArg,
    data: str | os.PathLike | DataSource | object,
    *,
    thresholds: Thresholds | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    batch_size: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    preprocess: ImagePreprocess | None = None,
    seed: int = 0,
    limit_batches: int | None = None,
) -> FidelityReport:
    """Run both models under ORT on the same feeds of `data`; judge against `thresholds`.

    `data` is anything `onnxopt.data.sources.open_data` accepts (opened for the reference's inputs).
    The returned report lists missed thresholds in `failures`; it does not raise for them.
    """
    provider_name(provider)
    ref_proto, ref_source = _model(reference)
    cand_proto, cand_source = _model(candidate)
    _check_same_inputs(ref_proto, cand_proto)
    check_tensor_sizes(ref_proto)
    check_tensor_sizes(cand_proto)
    if data is None:
        raise InputError("validate needs data: a .npz/.npy file, a folder, or 'random'")
    source = open_data(
        data, ref_proto, batch_size=batch_size, seed=seed, shapes=shapes, preprocess=preprocess
    )
    # the two sessions take turns: idle threads of one spinning would slow the other
    options = session_options(threads=threads, spinning=False)
    ref_session = make_session(ref_source, provider, options=options)
    cand_session = make_session(cand_source, provider, options=options)
    report = compare_sessions(ref_session, cand_session, source, limit_batches=limit_batches)
    if report.samples == 0:
        raise InputError(f"no samples in {source.description}")
    thresholds = thresholds or Thresholds()
    report.thresholds = thresholds.given()
    report.failures = threshold_failures(report, thresholds)
    return report


def _model(model: ModelArg) -> tuple[onnx.ModelProto, onnx.ModelProto | str]:
    """The proto (for input specs) and what a session is made from (the path when there is one)."""
    if isinstance(model, onnx.ModelProto):
        return model, model
    loaded = load_model(model)
    return loaded.proto, str(Path(loaded.path))


def _check_same_inputs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> None:
    ref_names = [s.name for s in input_specs(reference)]
    cand_names = [s.name for s in input_specs(candidate)]
    if sorted(ref_names) != sorted(cand_names):
        raise InputError(
            f"the models take different inputs: reference ({', '.join(ref_names)}), "
            f"candidate ({', '.join(cand_names)})"
        )
