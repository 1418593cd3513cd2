"""What a cell measures besides accuracy: per-class accuracy and backdoor success (Appendix H)."""

from __future__ import annotations

import torch
from torch import nn

from uebench.poison import Poison
from uebench.training import predict


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Accuracy in percent of each true class (rows of the confusion matrix); NaN if absent."""
    totals = confusion.sum(1).double()
    out = 100.0 * confusion.diag().double() / totals.clamp(min=1)
    return torch.where(totals > 0, out, torch.full_like(out, float("nan")))


def noised_classes(poison: Poison, num_classes: int) -> list[int] | None:
    """For a class-wise poison (row k = class k's noise), the classes whose images got noise."""
    if poison.form != "class" or len(poison.delta) != num_classes:
        return None
    return [int(row) for row in poison.rows.unique() if row >= 0]


@torch.no_grad()
def backdoor_success_rate(
    model: nn.Module,
    poison: Poison,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    device: torch.device,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> float | None:
    """Appendix H: the share (%) of clean test images predicted as a random other class once
    that class's noise is added to them; None when the poison is not class-wise.

    Each test image gets a target class drawn uniformly among the *noised* classes other than
    its own, so single-class poisons are measured only on their one trigger.
    """
    classes = noised_classes(poison, num_classes)
    if not classes:
        return None
    choices = torch.tensor(classes, dtype=torch.long).view(1, -1).expand(len(y_test), -1)
    allowed = (choices != y_test.view(-1, 1)).float()
    usable = allowed.sum(1) > 0
    if not usable.any():
        return None
    picks = torch.multinomial(allowed[usable], 1, generator=generator).flatten()
    targets = choices[usable].gather(1, picks.view(-1, 1)).flatten()
    x = x_test[usable]
    triggered = poison.add(x, poison.delta[targets])
    predicted = predict(model, triggered, device, batch_size)
    return 100.0 * float((predicted == targets).float().mean())
