"""Options of the `distill` pass (typed, with a default and a doc each). No torch here: the
pass registry imports this module in every install."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from onnxopt.infra.options import option


@dataclass(frozen=True)
class DistillOptions:
    teacher: Literal["input", "previous"] = option(
        "input", "the model to learn from: the pipeline's input, or the model before this pass"
    )
    epochs: int = option(16, "passes over the training samples (fewer when max_seconds ends it)",
                         low=1, high=1000)
    max_seconds: float = option(600.0, "wall-clock budget of the training loop", low=1.0)
    lr: float = option(
        5e-4, "Adam learning rate, relative: a step moves each weight channel by about this "
        "share of its RMS (warm-up, then cosine decay)", low=1e-8, high=1.0,
    )
    scale_lr: float = option(1e-3, "Adam learning rate of log activation scales", low=0.0,
                             high=1.0)
    codebook_lr: float = option(
        2e-5, "Adam learning rate of share codebooks (centroids and their channel scales), "
        "relative as lr: an entry stands for many weights and a step moves them all",
        low=0.0, high=1.0,
    )
    batch_size: int = option(16, "samples per step", low=1, high=4096)
    temperature: float = option(2.0, "softening of class outputs in the KL term", low=0.1,
                                high=100.0)
    feature_weight: float = option(
        1.0, "weight of the feature term (normalized MSE on tensors both graphs share)", low=0.0
    )
    features: int = option(4, "how many shared intermediate tensors the feature term uses",
                           low=0, high=64)
    early_stop: float = option(
        0.15, "share of the calibration samples kept aside to pick the best epoch", low=0.05,
        high=0.5,
    )
    augment: bool | None = option(
        None,
        "mixup between samples; flips and random resized crops of NCHW images. none (auto): "
        "on, unless the student is pruned (some tensor has fewer channels than the teacher's), "
        "whose early-stopping fidelity fell under augmentation in every run measured",
    )
    train_scales: bool = option(True, "train the activation scales of a quantized model (LSQ)")
    patience: int = option(
        3, "stop after this many epochs without improvement, counted once half the schedule "
        "has run (the learning rate has peaked)", low=1,
    )
    min_cosine: float = option(
        0.9, "roll back when the output cosine on --val (else the holdout) falls below this",
        low=0.0, high=1.0,
    )
