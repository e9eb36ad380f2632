"""`distill`: knowledge distillation from the original model into the compressed one.

The pipeline's input model (or, with `teacher=previous`, the model before this pass) is the
teacher, run in ONNX Runtime; this pass's input is the student, run as a trainable torch view
of its ONNX graph (`onnxopt.training`). The student learns to match the teacher's outputs
(temperature-softened KL for class scores, normalized MSE otherwise) and a few intermediate
tensors both graphs share, on augmented calibration samples that the teacher labels afresh
(a pruned student trains on them as they are: augmentation cost it fidelity);
a part of the calibration samples is kept aside to pick the best epoch. What trains: float
weights and biases of Conv/ConvTranspose/Gemm/MatMul and norms; a `quant` output's int8
weights (straight-through rounding on its scales; in QDQ and in the dynamic pattern it writes
for transformers, MatMulInteger with the weight scale in the Mul after it), its activation
scales (LSQ) and its int32 biases; a `share` output's codebook centroids and channel scales
(at `codebook_lr`: each entry moves many weights at once). Shapes and element types never
change, so a pruned model stays pruned and a quantized one keeps the QDQ layout ONNX Runtime
fuses.

Declines (model unchanged, reason in the report): an op or attribute the torch view cannot run
exactly (named), nothing trainable, no epoch better than the start on the early-stopping
samples, a written model that ONNX Runtime does not run as the torch view did. Needs torch
(`pip install 'onnxopt[distill]'`); every other pass works without it.

    onnxopt optimize model.onnx --passes cleanup,prune,quant,distill --calib images/ -o out.onnx
    onnxopt optimize model.onnx --passes "quant,distill{max_seconds=300}" --calib c.npz
"""

from __future__ import annotations

import importlib.util

import onnx

from onnxopt.errors import InputError
from onnxopt.infra.pass_base import Fidelity, Pass, PassContext, PassResult
from onnxopt.training.options import DistillOptions

__all__ = ["DistillOptions", "DistillPass"]

INSTALL_HINT = "pip install 'onnxopt[distill]'"


class DistillPass(Pass[DistillOptions]):
    name = "distill"
    summary = "knowledge distillation: train the compressed graph against the original (torch)"
    Options = DistillOptions
    preserves = frozenset()  # constants change value
    min_opset = 10

    def requires_calibration(self) -> bool:
        return True

    def fidelity(self) -> Fidelity:
        return Fidelity(min_cosine=self.options.min_cosine)

    def check_applicable(self, model: onnx.ModelProto, ctx: PassContext) -> None:
        super().check_applicable(model, ctx)
        if importlib.util.find_spec("torch") is None:
            raise InputError(f"pass 'distill' needs torch: {INSTALL_HINT}")

    def apply(self, model: onnx.ModelProto, ctx: PassContext) -> PassResult:
        # torch is an optional dependency: imported only when this pass runs.
        from onnxopt.training.run import DistillRun

        teacher = ctx.original if self.options.teacher == "input" else model
        if teacher is None:
            return PassResult(model, False, {}, ["no teacher: the pipeline's input model is "
                                                 "not known here (use teacher=previous)"])
        run = DistillRun(self.options, ctx.provider, ctx.require_calibration(self.name),
                         ctx.seed, ctx.progress)
        trained = run.distill(model, teacher)
        if trained is None:
            return PassResult(model, False, run.stats, run.skipped)
        return PassResult(trained, True, run.stats, run.skipped)
