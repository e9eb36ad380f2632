"""The pass contract: `run(model, ctx) -> PassResult`, checked by the base class."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import onnx

from onnxopt.errors import InputError, PassRefused
from onnxopt.infra.analysis import AnalysisCache
from onnxopt.infra.options import NoOptions
from onnxopt.infra.progress import PassProgress, no_progress
from onnxopt.ir.graph import default_opset
from onnxopt.ir.opset import OLDEST_UPGRADABLE_OPSET, newest_convertible_opset

if TYPE_CHECKING:
    from onnxopt.data.sources import DataSource


@dataclass(frozen=True)
class Fidelity:
    """How close a pass's output must stay to its input on the validation samples.

    `max_rel_error`: max |after - before| <= max_rel_error * max(1, max |before|), per output.
    `min_cosine`: cosine similarity of the flattened outputs, per output.
    """

    max_rel_error: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_rel_error is not None:
            parts.append(f"max rel error <= {self.max_rel_error:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return ", ".join(parts) or "no numeric check"


EXACT = Fidelity(max_rel_error=1e-5)


@dataclass
class PassContext:
    """What a pass may use besides the model: data, provider, seed, analyses, the input model.

    `calibration` is what the pass may fit on. The data the manager measures fidelity on
    (--val, or its holdout of the calibration samples) is deliberately not here: a pass that
    chose anything on it would make the gate's number in-sample.
    """

    provider: str = "cpu"
    seed: int = 0
    calibration: DataSource | None = None
    analyses: AnalysisCache = field(default_factory=AnalysisCache)
    original: onnx.ModelProto | None = None
    """The pipeline's input model, for passes that learn from it (distill's teacher)."""
    progress: PassProgress = no_progress

    def require_calibration(self, pass_name: str) -> DataSource:
        if self.calibration is None:
            raise InputError(
                f"pass '{pass_name}' needs calibration data: give --calib FILE "
                "(or --calib random for a smoke test with meaningless fidelity)"
            )
        return self.calibration


OptionsT = TypeVar("OptionsT")


@dataclass
class PassResult:
    """A pass's output model, whether it changed anything, counters, and what it refused and why."""

    model: onnx.ModelProto
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


class Pass(ABC, Generic[OptionsT]):
    """Base class of every pass. Subclasses set the class attributes and implement `apply`.

    `apply` receives a private copy of the model and may mutate it; the manager keeps the
    original for rollback.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    min_opset: ClassVar[int] = 1
    preserves: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else self.Options()

    def fidelity(self) -> Fidelity:
        """The numeric check the manager applies after this pass; exact by default."""
        return EXACT

    def requires_calibration(self) -> bool:
        """Whether this configuration of the pass needs calibration data."""
        return False

    def prerequisites(self, model: onnx.ModelProto) -> tuple[str, ...]:
        """Pipeline steps (text, e.g. "cleanup") to run right before this pass on `model`.

        The manager runs each as a pass of its own (contract, instruments, gate, a report row)
        unless the step that ran right before is already that step. A pass never runs another
        pass by hand; it asks for it here. By default: `upgrade{opset=min_opset}` when the
        model's opset is below `min_opset` but one the converter starts from.
        """
        return upgrade_steps(model, self.min_opset)

    def opset_after(self, opset: int) -> int:
        """The default-domain opset a model of `opset` has after this pass (most keep it)."""
        return opset

    def check_opset(self, model: onnx.ModelProto, opset: int | None = None) -> None:
        """Raise PassRefused when the model (at `opset`, default its own: the opset it will
        have once the prerequisites ran) is below `min_opset` or imports no ai.onnx opset."""
        opset = default_opset(model) if opset is None else opset
        if opset == 0 and self.min_opset > 1:
            domains = ", ".join(sorted({o.domain for o in model.opset_import})) or "none"
            raise PassRefused(
                f"pass '{self.name}' works on ai.onnx operators; the model imports no ai.onnx "
                f"opset (its domains: {domains})"
            )
        if opset < self.min_opset:
            if opset < OLDEST_UPGRADABLE_OPSET:
                why = f"onnxopt upgrades models from opset {OLDEST_UPGRADABLE_OPSET} on"
            elif self.min_opset > newest_convertible_opset():
                why = f"onnx's converter reaches opset {newest_convertible_opset()} at most"
            else:
                why = f"run '{UPGRADE_PASS}{{opset={self.min_opset}}}' before it"
            raise PassRefused(
                f"pass '{self.name}' needs opset >= {self.min_opset}, the model has opset {opset} "
                f"({why})"
            )

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        """Raise PassRefused/InputError when the pass cannot run at all (besides the opset:
        `check_opset`)."""
        if self.requires_calibration():
            ctx.require_calibration(self.name)

    def run(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        self.check_opset(model)
        self.check_applicable(model, ctx)
        result = self.apply(model, ctx)
        self._check_contract(result)
        return result

    @abstractmethod
    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult: ...

    def _check_contract(self, result: Any) -> None:
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.name}' returned {type(result).__name__}, not PassResult")
        if not isinstance(result.model, onnx.ModelProto):
            raise TypeError(f"pass '{self.name}' returned a {type(result.model).__name__} model")
        json.dumps(result.stats)
        if not all(isinstance(reason, str) for reason in result.skipped):
            raise TypeError(f"pass '{self.name}' reported non-text skip reasons")


UPGRADE_PASS = "upgrade"
"""The registered name of the pass that converts a model's opset (passes/upgrade.py)."""


def upgrade_steps(model: onnx.ModelProto, min_opset: int) -> tuple[str, ...]:
    """`upgrade{opset=min_opset}` when `model` is below `min_opset`, at least at
    OLDEST_UPGRADABLE_OPSET, and `min_opset` is one the converter writes; else nothing (the
    pass then refuses the model in `check_opset`)."""
    opset = default_opset(model)
    if OLDEST_UPGRADABLE_OPSET <= opset < min_opset <= newest_convertible_opset():
        return (f"{UPGRADE_PASS}{{opset={min_opset}}}",)
    return ()
