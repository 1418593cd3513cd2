"""``emax``: error-maximizing (adversarial) noise against a source model trained on clean data.

Sample-wise: PGD-20 (torchattacks) on every training image.  Class-wise: one universal
perturbation per class, crafted by sign-gradient *ascent* on a stratified 20% subset
(Section 4, following the universal-attack procedure).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
import torchattacks

from uebench.crafting import craft_autocast, start_crafting
from uebench.data import ImageData
from uebench.method import CraftContext, Method, check_eps, check_fraction
from uebench.poison import Poison
from uebench.training import TrainConfig


class ErrorMaximizing(Method):
    """Adversarial noise, sample-wise or class-wise (universal per class)."""

    crafts_by_gradient = True

    uses_victim_training = True

    def __init__(
        self,
        *,
        form: Literal["sample", "class"] = "sample",
        eps: float = 8 / 255,
        steps: int = 20,
        alpha: float | None = None,
        subset: float | None = None,
        source: str = "resnet18",
        source_epochs: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        self.form = form
        self.eps = check_eps(eps)
        self.steps = steps
        self.alpha = alpha if alpha is not None else eps / 10
        self.subset = check_fraction(
            "subset", subset if subset is not None else (1.0 if form == "sample" else 0.2)
        )
        self.source = source
        self.source_epochs = source_epochs
        self.batch_size = batch_size
        self.seed = seed

    def crafting_passes(self, train_size: int, train: TrainConfig) -> tuple[float, float]:
        """The source trained as the victim is (its epochs over the training set), then
        ``steps`` PGD steps over the crafting subset."""
        epochs = self.source_epochs or train.epochs
        passes = epochs * train_size + self.steps * round(self.subset * train_size)
        return passes, passes

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        epochs = self.source_epochs or ctx.train_config.epochs
        opening = start_crafting(
            data, ctx, seed=self.seed, source=self.source, subset=self.subset, source_epochs=epochs
        )
        model, crafting, x, y = opening.model, opening.indices, opening.x, opening.y
        if self.form == "sample":
            bank = torch.zeros(len(data.y_train), *data.image_shape)
            bank[crafting] = self._samplewise(model, x, y, ctx).cpu()
            rows = torch.arange(len(data.y_train))
        else:
            bank, rows = self._classwise(model, x, y, data.num_classes, ctx).cpu(), data.y_train
        meta = {
            "form": self.form,
            "source_epochs": epochs,
            "craft_seconds": opening.seconds(),
        }
        return Poison(bank.clamp(-self.eps, self.eps), rows, self.eps, meta)

    def _samplewise(self, model, x, y, ctx: CraftContext) -> torch.Tensor:
        attack = torchattacks.PGD(
            model, eps=self.eps, alpha=self.alpha, steps=self.steps, random_start=True
        )
        delta = torch.empty_like(x)
        bar = ctx.bar(len(x), "emax:sample")
        for index in torch.arange(len(x), device=x.device).split(self.batch_size):
            delta[index] = attack(x[index], y[index]) - x[index]
            bar.update(len(index))
        bar.close()
        return delta

    def _classwise(self, model, x, y, num_classes: int, ctx: CraftContext) -> torch.Tensor:
        delta = torch.zeros(num_classes, *x.shape[1:], device=x.device)
        for _ in ctx.track(range(self.steps), "emax:class"):
            for index in torch.arange(len(x), device=x.device).split(self.batch_size):
                shared = delta.clone().requires_grad_(True)
                with craft_autocast(x.device):
                    logits = model((x[index] + shared[y[index]]).clamp(0, 1))
                    loss = F.cross_entropy(logits.float(), y[index])
                (grad,) = torch.autograd.grad(loss, shared)
                delta = (delta + self.alpha * grad.sign()).clamp_(-self.eps, self.eps)
        return delta
