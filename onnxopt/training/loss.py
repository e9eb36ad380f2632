"""The distillation loss: the student's outputs (and some shared features) against the
teacher's, per batch.

Outputs with a class axis (2-D, more than one class) compare as temperature-softened
distributions: KL(teacher || student) at temperature T, scaled by T^2 so its gradients keep
their size as T changes (Hinton et al.). Any other output (detection maps, embeddings,
sequences) and every feature compares by normalized MSE: ||s - t||^2 / ||t||^2, which is
1 - 2 cos + ratio^2 in disguise and does not depend on the tensor's units.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def is_class_output(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] > 1


def kl_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_p = F.log_softmax(student / temperature, dim=1)
    target = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p, target, reduction="batchmean") * temperature**2


def normalized_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    teacher = teacher.to(student.dtype)
    return (student - teacher).pow(2).sum() / teacher.pow(2).sum().clamp_min(1e-12)


def distill_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    outputs: int,
    temperature: float,
    feature_weight: float,
) -> torch.Tensor:
    """The first `outputs` pairs are graph outputs, the rest features."""
    total = student[0].new_zeros(())
    for position, (s, t) in enumerate(zip(student, teacher, strict=True)):
        if not s.is_floating_point():
            continue
        if position >= outputs:
            total = total + feature_weight * normalized_mse(s, t) / max(
                1, len(student) - outputs)
        elif is_class_output(tuple(s.shape)):
            total = total + kl_term(s, t.to(s.dtype), temperature)
        else:
            total = total + normalized_mse(s, t)
    return total
