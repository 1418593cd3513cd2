"""``tap``: targeted adversarial poisoning, Fowl et al., "Adversarial Examples Make Strong
Poisons" (NeurIPS 2021).

A source model is trained on the clean training set (here with the grid's training config, as
``emax`` does; ``source_epochs`` overrides its epochs), then every training image gets a
targeted L∞ PGD perturbation toward a fixed permutation of the classes, so that the victim
learns features of the wrong class.  Defaults follow the official code
(lhfowl/adversarial_poisons, ``anneal.py --recipe targeted --attackoptim PGD``):

* target class (y + 1) mod K (``targets=next``, its ``_label_map``); ``targets=random`` is a
  seeded random permutation without fixed points instead;
* ε = 8/255, ``steps`` = 250 signed steps of ``alpha`` = ε/20 (its τ = 0.05 times ε), from a
  Gaussian start N(0, ε²) clipped to the ε-ball, on batches of 512, the model in eval mode;
* every step sees a fresh differentiable augmentation of x+δ (``augment=true``): a random
  sub-pixel translation of up to 1/8 of the side (bilinear, zero fill) and a horizontal flip,
  kornia's version of its ``RandomTransform``;
* ``restarts`` = 8 whole-set trials, keeping the one with the lowest mean target loss.
  The official code scores a trial by the loss of its last pass; this one scores the final
  noise with one more augmented pass (the same quantity one step later).

The official code trains its source ResNet-18 with its own schedule; the grid's training config
stands in for it so that the source matches the victim pipeline.  The source model is kept with
the poison (``meta.target_rate`` is how often it predicts the target class on x+δ).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from uebench.crafting import (
    accuracy_under_noise,
    craft_autocast,
    crafting_set,
    minimize_error,
    trained_source,
)
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison, Surrogate


def differentiable_shift_and_flip() -> nn.Module:
    """Random translation by up to 1/8 of each side (bilinear, zero fill) and horizontal flip,
    per image, differentiable: the official code's poison augmentation."""
    return nn.Sequential(
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=1.0, padding_mode="zeros"),
        K.RandomHorizontalFlip(),
    )


def target_classes(
    num_classes: int, how: Literal["next", "random"], generator: torch.Generator
) -> torch.Tensor:
    """The class each class is pushed toward: (y + 1) mod K, or a seeded random permutation
    with no class mapped to itself."""
    if how == "next":
        return (torch.arange(num_classes) + 1) % num_classes
    while True:  # a uniform permutation is a derangement with probability about 1/e
        mapping = torch.randperm(num_classes, generator=generator)
        if not bool((mapping == torch.arange(num_classes)).any()):
            return mapping


class TargetedAdversarialPoisoning(Method):
    """Targeted PGD toward a fixed class permutation against a clean-trained source."""

    crafts_by_gradient = True

    uses_victim_training = True

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 250,
        alpha: float | None = None,
        restarts: int = 8,
        targets: Literal["next", "random"] = "next",
        augment: bool = True,
        batch_size: int = 512,
        source: str = "resnet18",
        source_epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        self.eps = check_eps(eps)
        if steps < 1 or restarts < 1 or batch_size < 1:
            raise UebenchError("tap needs steps >= 1, restarts >= 1 and batch_size >= 1")
        if source_epochs is not None and source_epochs < 0:
            raise UebenchError(f"tap: source_epochs must be >= 0, got {source_epochs}")
        self.steps = steps
        self.alpha = alpha if alpha is not None else eps / 20
        self.restarts = restarts
        self.targets = targets
        self.augment = augment
        self.batch_size = batch_size
        self.source = source
        self.source_epochs = source_epochs
        self.seed = seed

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        if data.num_classes < 2:
            raise UebenchError("tap needs at least 2 classes to push images toward another one")
        started = time.perf_counter()
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        epochs = self.source_epochs if self.source_epochs is not None else ctx.train_config.epochs
        model = trained_source(self.source, data, ctx, epochs, generator)
        _, x, y = crafting_set(data, 1.0, self.seed, ctx.device)  # the whole set, in order
        mapping = target_classes(data.num_classes, self.targets, generator)
        target = mapping.to(ctx.device)[y]
        seen = nn.Sequential(differentiable_shift_and_flip(), model) if self.augment else model

        best, best_loss = None, math.inf
        batches = torch.arange(len(x), device=ctx.device).split(self.batch_size)
        bar = ctx.bar(self.restarts * len(batches), "tap")
        for _ in range(self.restarts):
            delta = torch.empty_like(x)
            for index in batches:
                start = torch.randn(x[index].shape, generator=generator).to(ctx.device) * self.eps
                start = (x[index] + start.clamp_(-self.eps, self.eps)).clamp_(0, 1) - x[index]
                # Targeted PGD is error-minimizing PGD toward the target labels.
                delta[index] = minimize_error(
                    seen,
                    x[index],
                    target[index],
                    start,
                    eps=self.eps,
                    alpha=self.alpha,
                    steps=self.steps,
                )
                bar.update()
            loss = self._target_loss(seen, x, target, delta, batches)
            bar.set_postfix(target_loss=f"{loss:.4f}")
            if loss < best_loss:
                best, best_loss = delta, loss
        bar.close()
        assert best is not None
        rate = accuracy_under_noise(model, x, target, lambda index: best[index], self.batch_size)
        meta = {
            "form": "sample",
            "source_epochs": epochs,
            "restarts": self.restarts,
            "targets": mapping.tolist(),
            "target_loss": best_loss,
            "target_rate": rate,
            "craft_seconds": time.perf_counter() - started,
        }
        surrogate = Surrogate.of(model, self.source, data.num_classes, data.image_shape)
        rows = torch.arange(len(data.y_train))
        return Poison(best.cpu().clamp(-self.eps, self.eps), rows, self.eps, meta, surrogate)

    @torch.no_grad()
    def _target_loss(
        self,
        seen: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        delta: torch.Tensor,
        batches: tuple[torch.Tensor, ...],
    ) -> float:
        """Mean cross-entropy toward the targets over the whole set: a restart's score."""
        total = torch.zeros((), device=x.device)
        for index in batches:
            with craft_autocast(x.device):
                logits = seen((x[index] + delta[index]).clamp(0, 1))
            total += F.cross_entropy(logits.float(), target[index], reduction="sum")
        return float(total) / len(x)
