"""Distillation: train a compressed ONNX graph (the student) to match its teacher on unlabeled
calibration data, then write what it learned back into the same constants.

Steps: plan what trains (`trainables`), build the torch view (`graph_module`), split the
calibration samples into training rows and early-stopping rows, and train with Adam on
augmented batches that the teacher (ONNX Runtime) labels afresh, with a cosine learning-rate
decay over the epochs or the time budget, whichever ends first. After each epoch the student
is scored on the early-stopping rows with the project's fidelity scorer; the best epoch wins,
and a student that never beats its starting point is not returned. The written model is run
in ONNX Runtime and must agree with the torch view before it is returned.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from onnxopt.data.feeds import DataSource, Feed, input_specs, static_batch
from onnxopt.infra.progress import PassProgress, no_progress
from onnxopt.ir.graph import constant_node_value, replace_constant
from onnxopt.ir.shapes import infer_shapes
from onnxopt.runtime.fidelity import compare_runners
from onnxopt.runtime.probe import expose_tensors
from onnxopt.runtime.session import RELEASE, make_session, session_options
from onnxopt.training.features import (
    FeatureMatch,
    candidate_features,
    match_feature,
    narrowed,
    spread,
)
from onnxopt.training.graph_module import GraphModule
from onnxopt.training.loss import distill_loss
from onnxopt.training.nodes import Unsupported
from onnxopt.training.options import DistillOptions
from onnxopt.training.samples import (
    Samples,
    SamplesSource,
    augment,
    load_samples,
    split_early_stop,
)
from onnxopt.training.trainables import plan_training

log = logging.getLogger(__name__)

MIN_SAMPLES = 8
MATCH_ROWS = 4
"""Samples the feature pairing is measured on: a few images give tens of thousands of
positions per channel, and every candidate tensor of the batch is held at once."""


@dataclass(frozen=True)
class Score:
    """Early-stopping fidelity: the worst output cosine with the teacher, then top-1 agreement
    when the first output is class scores. The cosine leads because it moves smoothly: top-1
    on the hundred-odd early-stopping samples moves by whole samples, and picked a model whose
    cosine had fallen (pruned MobileNetV2: early-stop top-1 80.5 -> 82.9 % while its cosine
    fell 0.9761 -> 0.9716; on 200 new crops its top-1 fell 76 -> 73 %)."""

    top1: float | None
    cosine: float

    def key(self) -> tuple[float, float]:
        return (self.cosine, self.top1 if self.top1 is not None else 0.0)

    def to_dict(self) -> dict:
        return {"top1": self.top1, "cosine": self.cosine}


@dataclass
class DistillRun:
    options: DistillOptions
    provider: str
    data: DataSource
    seed: int = 0
    progress: PassProgress = no_progress
    batch: int = 0
    stats: dict = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def distill(self, student: onnx.ModelProto, teacher: onnx.ModelProto) -> onnx.ModelProto | None:
        """The trained student, or None (reason in `skipped`)."""
        plan = plan_training(student, scales=self.options.train_scales)
        self.skipped.extend(plan.declined)
        if not any(learning_rate(self.options, t.kind) > 0 for t in plan.trainables):
            self.skipped.append("nothing to train: no float or int8 weights reach a layer"
                                if not plan.trainables else
                                "nothing to train: every learning rate of its weights is 0")
            return None
        try:
            module = GraphModule(student, plan)
        except Unsupported as exc:
            self.skipped.append(f"model declined: the torch view cannot run it: {exc}")
            return None
        samples = load_samples(self.data)
        # a static batch dim (batch-1 exports) is the only batch the graph runs
        fixed = static_batch(input_specs(student))
        self.batch = fixed or self.options.batch_size
        if samples.count < max(MIN_SAMPLES, 2 * self.batch):
            self.skipped.append(f"distill needs at least {max(MIN_SAMPLES, 2 * self.batch)} "
                                "calibration samples (it keeps some aside to pick its best "
                                f"epoch); got {samples.count}")
            return None
        self.stats["trained"] = plan.counts()
        threads = _cores()
        torch.set_num_threads(threads)
        torch.manual_seed(self.seed)
        device = _device(self.provider)
        module.to(device)
        train, stop = split_early_stop(samples, self.options.early_stop, self.seed, fixed or 1)
        self.stats.update(samples_trained=train.count, samples_early_stop=stop.count)
        # a static batch (batch-1 exports) pairs in its own batch
        pairing = train.take(np.arange(min(train.count, fixed or MATCH_ROWS)))
        # both uses of the graphs' shared tensors (feature pairing, the pruned-student check)
        # read one shape inference of each graph
        shapes = infer_shapes(student), infer_shapes(teacher)
        features = self._features(module, student, teacher, shapes, pairing, threads)
        module.extra = [match.name for match in features]
        teacher_session = make_session(
            expose_tensors(teacher, module.extra), self.provider,
            options=session_options(threads=threads, spinning=False),
        )
        labeller = Labeller(teacher_session, module.output_names, features)
        options = dataclasses.replace(self.options,
                                      augment=self._augmenting(student, teacher, shapes))
        trainer = Trainer(module, labeller, options, device, self.seed, self.batch,
                          self.progress)
        best = trainer.fit(train, stop)
        self.stats.update(trainer.stats)
        if best is None:
            self.skipped.append("no epoch beat the student it started from on the "
                                "early-stopping samples: model left as it was")
            return None
        written = write_back(student, module.constant_values())
        return self._verdict(student, written, labeller, stop)

    def _augmenting(self, student: onnx.ModelProto, teacher: onnx.ModelProto,
                    shapes: tuple) -> bool:
        """`options.augment`, or when unset: on, unless the student is pruned. A pruned
        MobileNetV2 (prune 0.3, int8) lost early-stopping cosine under augmentation in every
        run (16 epochs: 0.9711 -> 0.9642 after the first, 0.950-0.957 after the rest), and
        gained without it (0.9711 -> 0.9736; 200 new crops 75.0 -> 77.5 %). Full-width int8
        and codebook students fit new crops of the calibration photos as well or better
        without it, but lose on 200 crops of other photos (int8 cosine 0.99626 with, 0.99613
        without; codebooks 0.98980 with (4 epochs), 0.98949 without: below their start,
        0.98988)."""
        if self.options.augment is not None:
            self.stats["augment"] = self.options.augment
            return self.options.augment
        thinned = narrowed(student, teacher, *shapes)
        self.stats["augment"] = not thinned
        if thinned:
            log.info("distill: no augmentation, the student is pruned (%d tensors narrower "
                     "than the teacher's, e.g. %s)", len(thinned), thinned[0])
        return not thinned

    def _features(self, module: GraphModule, student, teacher, shapes: tuple, feed: Feed,
                  threads: int) -> list[FeatureMatch]:
        """The feature term's tensors, paired channel by channel on `feed` (see
        `training.features`)."""
        candidates = (candidate_features(student, teacher, *shapes) if self.options.features
                      else [])
        computed = module.computed()
        candidates = [name for name in candidates if name in computed]
        if not candidates:
            self.stats["features"] = {"candidates": 0, "used": 0}
            return []
        session = make_session(expose_tensors(teacher, candidates), self.provider,
                               options=session_options(threads=threads, spinning=False))
        teacher_values = session.run(candidates, feed)
        del session
        module.extra = candidates
        with torch.no_grad():
            got = module(*tensors(feed, module.input_names, _module_device(module)))
        student_values = [t.cpu().numpy() for t in got[len(module.output_names):]]
        module.extra = []
        matches = [match_feature(name, s, t, self.seed) for name, s, t in
                   zip(candidates, student_values, teacher_values, strict=True)]
        usable = [m for m in matches if m is not None]
        chosen = spread(usable, self.options.features)
        self.stats["features"] = {
            "candidates": len(candidates), "paired": len(usable), "used": len(chosen),
            "channels_used": int(sum(len(m.student_channels) for m in chosen)),
        }
        return chosen

    def _verdict(self, student, written, labeller, stop: Samples) -> onnx.ModelProto | None:
        """`written` when ONNX Runtime agrees with the teacher on the early-stopping samples
        better than it does running `student` (what the torch view scored is a simulation of
        int8 kernels whose float sums round differently, see `fusion`)."""
        source = SamplesSource(stop, self.batch, "early-stopping samples")
        outputs = len(onnx_outputs(student))
        references = [labeller(feed)[:outputs] for feed in source]
        before, after = (_session_score(model, self.provider, references, source)
                         for model in (student, written))
        self.stats["onnxruntime_early_stop"] = {"before": before.to_dict(),
                                                "after": after.to_dict()}
        if after.key() <= before.key():
            self.skipped.append(
                f"under ONNX Runtime the trained model agrees no better with the teacher on the "
                f"early-stopping samples ({_describe(after)} vs {_describe(before)} before): "
                "model left as it was")
            return None
        return written


def onnx_outputs(model: onnx.ModelProto) -> list[str]:
    return [o.name for o in model.graph.output]


def _session_score(model, provider, references, source) -> Score:
    session = make_session(model, provider, options=session_options(spinning=False))
    names = onnx_outputs(model)
    pending = iter(references)
    report = compare_runners(lambda feed: next(pending), lambda feed: session.run(names, feed),
                             names, source)
    return score_of(report)


def score_of(report) -> Score:
    cosines = [o.cosine for o in report.outputs if o.cosine is not None]
    return Score(report.outputs[0].top1, float(min(cosines)) if cosines else 0.0)


def _describe(score: Score) -> str:
    top1 = "" if score.top1 is None else f"top-1 {100 * score.top1:.1f} %, "
    return f"{top1}cosine {score.cosine:.4f}"


class Labeller:
    """The teacher under ONNX Runtime: its outputs for a batch, then its features in the
    student's channels and units."""

    def __init__(self, session, outputs: list[str], features: list[FeatureMatch]) -> None:
        self.session, self.outputs, self.features = session, outputs, features
        self.names = outputs + [match.name for match in features]

    def __call__(self, feed: Feed) -> list[np.ndarray]:
        # the arena gives back the teacher's batch before the student's forward and backward
        # take their peak (share{target_ratio=6} MobileNetV2: peak RSS 4.32 -> 4.06 GB)
        values = self.session.run(self.names, feed, RELEASE)
        count = len(self.outputs)
        return values[:count] + [match.target(value) for match, value in
                                 zip(self.features, values[count:], strict=True)]


def _module_device(module: GraphModule) -> torch.device:
    return next(iter(module.parameters())).device


def student_runner(module: GraphModule, outputs: int):
    """The torch view as a fidelity-scorer runner (numpy in, its graph outputs out)."""
    device = _module_device(module)

    def run(feed: Feed) -> list[np.ndarray]:
        with torch.no_grad():
            got = module(*tensors(feed, module.input_names, device))
        return [t.detach().cpu().numpy() for t in got[:outputs]]

    return run


def learning_rate(options: DistillOptions, kind: str) -> float:
    """The Adam learning rate of a trainable of `kind` (0: it stays fixed)."""
    return {"log_scale": options.scale_lr, "codebook": options.codebook_lr}.get(kind, options.lr)


WARMUP = 0.1
"""Share of the schedule over which the learning rate ramps up: Adam's first steps move every
parameter by about the learning rate whatever its gradient, which at full rate costs a trained
network more than its first epoch gains back (MobileNetV2 int8: early-stopping cosine
0.9967 -> 0.9945 after one epoch at 1e-4 without it)."""


PATIENCE_FROM = 0.5
"""Share of the schedule after which epochs without improvement count towards `patience`.
Near the peak learning rate a student first falls below its start and climbs back as the rate
decays (MobileNetV2 int8, early-stopping cosine by epoch: 0.9965, 0.9963, 0.9969 ... 0.9976
by the seventh); counting from the first epoch stopped weight-shared MobileNetV2 after three
such epochs."""


def learning_rate_factor(fraction: float) -> float:
    """Linear warm-up, then cosine decay to zero, over the fraction of the budget spent."""
    if fraction < WARMUP:
        return fraction / WARMUP
    return 0.5 * (1 + np.cos(np.pi * (fraction - WARMUP) / (1 - WARMUP)))


def tensors(feed: Feed, names: list[str], device: torch.device) -> list[torch.Tensor]:
    """The feed as torch tensors; images channels-last, the layout torch's CPU convolutions
    run fastest in (about 2x on MobileNetV2)."""
    out = []
    for name in names:
        value = torch.from_numpy(feed[name]).to(device)
        if value.ndim == 4 and value.is_floating_point():
            value = value.contiguous(memory_format=torch.channels_last)
        out.append(value)
    return out


class Trainer:
    """Adam with cosine decay on augmented batches; the best early-stopping epoch wins."""

    def __init__(self, module: GraphModule, labeller: Labeller, options: DistillOptions,
                 device: torch.device, seed: int, batch: int,
                 progress: PassProgress = no_progress) -> None:
        self.module, self.labeller, self.options, self.device = module, labeller, options, device
        self.progress = progress
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)
        self.stats: dict = {}
        groups: dict[float, list] = {}
        for item, parameter in module.named_trainables():
            groups.setdefault(learning_rate(options, item.kind), []).append(parameter)
        self.optimizer = torch.optim.Adam([{"params": params, "lr": rate, "base": rate}
                                           for rate, params in groups.items() if rate > 0])

    def fit(self, train: Samples, stop: Samples) -> Score | None:
        """Train; keep the best epoch on `stop`. None when none beat the start.

        The schedule is planned in steps (`epochs` over the training rows); after each epoch
        the plan shrinks to the steps `max_seconds` has left at the pace measured so far, so
        the learning rate still decays to zero inside the budget. When the budget does not
        bind, the run depends on the seed and the data alone."""
        outputs = len(self.module.output_names)
        stop_source = SamplesSource(stop, self.batch, "early-stopping samples")
        references = [self.labeller(feed)[:outputs] for feed in stop_source]
        start = self.score(references, stop_source)
        best, best_state, stale = start, _state(self.module), 0
        history = [start.to_dict()]
        began = time.monotonic()
        per_epoch = max(1, train.count // self.batch)
        total, step, epochs = per_epoch * self.options.epochs, 0, 0
        detail = f"early-stop {_describe(start)}"
        while step < total and stale < self.options.patience:
            losses = []
            for rows in self._batches(train.count):
                if step >= total or time.monotonic() - began >= self.options.max_seconds:
                    break
                losses.append(self._step(train.take(rows), step, total, outputs))
                step += 1
                self.progress("distill", step, total, detail)
            epochs += 1
            elapsed = time.monotonic() - began
            total = min(total, step + int((self.options.max_seconds - elapsed) * step / elapsed))
            score = self.score(references, stop_source)
            history.append(score.to_dict() | {"loss": float(np.mean(losses))})
            log.info("distill epoch %d: loss %.4f, early-stop %s, %.0f s, about %.0f s left",
                     epochs, np.mean(losses), score.to_dict(), elapsed,
                     elapsed / step * (total - step))
            detail = f"epoch {epochs}: loss {np.mean(losses):.4f}, early-stop {_describe(score)}"
            if score.key() > best.key():
                best, best_state, stale = score, _state(self.module), 0
            elif step >= PATIENCE_FROM * total:
                stale += 1
        self.module.load_state_dict(best_state)
        # the wall time sits in a table: the model's metadata keeps scalar stats only, and
        # must not depend on the machine's speed
        self.stats = {"epochs": epochs, "steps": step,
                      "time": {"seconds": round(time.monotonic() - began, 1)},
                      "early_stop_before": start.to_dict(), "early_stop_after": best.to_dict(),
                      "history": history}
        return None if best is start else best

    def _batches(self, count: int):
        order = torch.randperm(count, generator=self.generator).numpy()
        size = min(self.batch, count)
        for begin in range(0, count - size + 1, size):
            yield np.sort(order[begin : begin + size])

    def _step(self, feed: Feed, step: int, total: int, outputs: int) -> float:
        if self.options.augment:
            feed = augment(feed, self.generator)
        targets = [torch.from_numpy(np.asarray(t)).to(self.device) for t in self.labeller(feed)]
        inputs = tensors(feed, self.module.input_names, self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base"] * learning_rate_factor((step + 1) / (total + 1))
        self.optimizer.zero_grad(set_to_none=True)
        got = self.module(*inputs)
        got = got[:outputs] + [match.student(value) for match, value in
                               zip(self.labeller.features, got[outputs:], strict=True)]
        loss = distill_loss(got, targets, outputs, self.options.temperature,
                            self.options.feature_weight)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def score(self, references: list[list[np.ndarray]], source: SamplesSource) -> Score:
        """The student against the teacher's outputs for `source`'s batches, in order."""
        outputs = len(self.module.output_names)
        pending = iter(references)
        report = compare_runners(lambda feed: next(pending), student_runner(self.module, outputs),
                                 self.module.output_names, source)
        return score_of(report)


def _state(module: GraphModule) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def write_back(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with each trained constant replaced, in its own element type."""
    out = copy.deepcopy(model)
    types = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type) for t in
             out.graph.initializer}
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in values:
            types[node.output[0]] = constant_node_value(node).dtype
    for name, value in values.items():
        dtype = types[name]
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = np.clip(np.rint(value), info.min, info.max)
        replace_constant(out.graph, name, np.asarray(value).astype(dtype))
    return out


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _device(provider: str) -> torch.device:
    if provider == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
