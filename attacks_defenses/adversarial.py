"""``advtrain``: PGD adversarial training (Madry et al.), the strongest countermeasure in the paper.

Each training batch is replaced by its PGD adversarial examples against the current model
(torchattacks; the attack runs the model in eval mode, so batch-norm statistics are not updated
by the attack's forward passes).
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from uebench.countermeasure import Countermeasure
from uebench.errors import UebenchError
from uebench.method import check_eps


class AdversarialTraining(Countermeasure):
    """Train on L∞ PGD examples: ε 8/255, 10 steps of 2/255 with a random start (the paper's)."""

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 10,
        alpha: float = 2 / 255,
        random_start: bool = True,
    ) -> None:
        self.eps = check_eps(eps)
        if steps < 1 or alpha <= 0:
            raise UebenchError("advtrain needs steps >= 1 and alpha > 0")
        self.steps = steps
        self.alpha = alpha
        self.random_start = random_start
        self._attack: torchattacks.PGD | None = None
        self._model: nn.Module | None = None

    def cost_factor(self) -> float:
        """Each step adds ``steps`` PGD passes (forward and backward) to the training pass."""
        return 1.0 + self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 1:
            raise UebenchError("advtrain needs hard labels; it cannot follow mixup or cutmix")
        if self._model is not model:  # one attack object per victim model
            self._attack = torchattacks.PGD(
                model,
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
                random_start=self.random_start,
            )
            self._model = model
        return self._attack(x, y).detach()
