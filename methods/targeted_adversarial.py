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
  sub-pixel translation of up to 1/8 of the side (bilinear) and a horizontal flip, kornia's
  version of its ``RandomTransform``; the official transform samples normalized images with zero
  padding, so the uncovered border takes the training set's mean colour, here too;
* ``restarts`` = 8 whole-set trials, keeping the one with the lowest mean target loss.
  The official code scores a trial by the loss of its last pass; this one scores the final
  noise with one more augmented pass (the same quantity one step later).

TAP is the method most sensitive to its source.  ``source_recipe=official`` trains it as the
official code does (its ``poison_train``): ``source_epochs`` (default 40) epochs of Nesterov SGD
(momentum 0.9, weight decay 5e-4, batch 128) at lr 0.1, ×0.1 at the official milestones
``epochs // 2.667, epochs // 1.6, epochs // 1.142`` (epochs 14, 24 and 35 of 40: Python's float
floor division), with the same mean-filled sub-pixel shift and flip as the crafting, on inputs
normalized by the training set's channel mean and std; a source with a data-dependent init
(airbench's whitening) is fitted to the normalized images it is then fed.  The ``paper``
protocol uses it.  ``source_recipe=victim`` (the default) trains the source with the grid's
training config, as ``emax`` does.  The poison's metadata keeps the
source's clean test accuracy (``source_clean_acc``) and the attack's target rate
(``target_rate``: how often the source predicts the target class on x+δ); a target rate below
:data:`LOW_TARGET_RATE` is reported in one line on stderr, since the noise then carries little
of the target classes' features.  The victim-recipe source model is kept with the poison;
the official one (a normalizing wrapper) is not.
"""

from __future__ import annotations

import math
import sys
from typing import ClassVar, Literal

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from uebench.crafting import (
    accuracy_under_noise,
    chunked_input_gradient,
    craft_autocast,
    minimize_error,
    start_crafting,
    trained_source,
)
from uebench.data import ImageData, to_float
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison, Surrogate
from uebench.precision import autocast as training_precision
from uebench.registry import ARCHS
from uebench.training import TrainConfig, accuracy, fit_to_training_images

#: A target rate (fraction) below this is reported: the official attack reaches most targets.
LOW_TARGET_RATE = 0.5
#: The official source schedule: epochs, and the divisors of its lr milestones (``linear``).
OFFICIAL_SOURCE_EPOCHS = 40
OFFICIAL_MILESTONE_DIVISORS = (2.667, 1.6, 1.142)


def official_milestones(epochs: int) -> list[int]:
    """The epochs where the official source schedule drops the lr ×0.1: ``epochs // d`` for
    each divisor, as Python computes it (14, 24, 35 at 40 epochs: 40 / 1.6 rounds below 25)."""
    return [int(epochs // divisor) for divisor in OFFICIAL_MILESTONE_DIVISORS]


class MeanFilled(nn.Module):
    """``augment`` applied around the mean colour: pixels it uncovers take ``mean``, as zero
    padding does on mean-subtracted (normalized) images."""

    def __init__(self, augment: nn.Module, mean: torch.Tensor) -> None:
        super().__init__()
        self.augment = augment
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.augment(x - self.mean) + self.mean


def differentiable_shift_and_flip(mean: torch.Tensor) -> nn.Module:
    """Random translation by up to 1/8 of each side (bilinear) and horizontal flip, per image,
    differentiable, uncovered pixels at the channel ``mean``: the official code's augmentation
    of the poison (and of its source's training)."""
    shift = nn.Sequential(
        K.RandomAffine(degrees=0.0, translate=(0.125, 0.125), p=1.0, padding_mode="zeros"),
        K.RandomHorizontalFlip(),
    )
    return MeanFilled(shift, mean)


def channel_stats(data: ImageData) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set's per-channel mean and std, in [0, 1] units."""
    channels = to_float(data.x_train).transpose(0, 1).flatten(1)
    return channels.mean(1), channels.std(1)


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

    uses_victim_training = True
    crafts_by_gradient = True
    late_options: ClassVar[dict[str, str]] = {"source_recipe": "victim"}
    # 1: the crafting shift fills with the mean colour, the official source trains with it, its
    # milestones are the official code's and its whitening sees the normalized images.
    revision = 1

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
        source_recipe: Literal["victim", "official"] = "victim",
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
        if source_recipe not in ("victim", "official"):
            raise UebenchError(
                f"tap: source_recipe must be victim or official, got {source_recipe!r}"
            )
        self.source_recipe = source_recipe
        self.seed = seed

    def crafting_passes(self, train_size: int, train: TrainConfig) -> tuple[float, float]:
        """The source's training (the victim's epochs, or the official recipe's 40), then each
        restart's ``steps`` PGD steps over the training set and its scoring forward pass."""
        epochs = self.source_epochs
        if epochs is None:
            epochs = OFFICIAL_SOURCE_EPOCHS if self.source_recipe == "official" else train.epochs
        passes = epochs * train_size + self.restarts * train_size * (self.steps + 1 / 3)
        return passes, passes

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        if data.num_classes < 2:
            raise UebenchError("tap needs at least 2 classes to push images toward another one")
        official = self.source_recipe == "official"
        epochs = self.source_epochs
        if epochs is None:
            epochs = OFFICIAL_SOURCE_EPOCHS if official else ctx.train_config.epochs
        # The whole training set, in order.
        opening = start_crafting(
            data,
            ctx,
            seed=self.seed,
            source=self.source,
            source_epochs=epochs,
            train_source=official_source if official else trained_source,
        )
        generator, model, x, y = opening.generator, opening.model, opening.x, opening.y
        source_acc = accuracy(model, data.x_test, data.y_test, ctx.device)
        mapping = target_classes(data.num_classes, self.targets, generator)
        target = mapping.to(ctx.device)[y]
        shift = differentiable_shift_and_flip(channel_stats(data)[0].to(ctx.device))
        # What the noise is crafted through: the augmentation, then the source.
        seen = nn.Sequential(shift if self.augment else nn.Identity(), model)

        best, best_loss = self._best_restart(seen, x, target, generator, ctx)
        rate = accuracy_under_noise(model, x, target, lambda index: best[index], self.batch_size)
        if rate < LOW_TARGET_RATE:
            print(
                f"uebench: warning: tap reaches its target class on only {100 * rate:.1f}% of "
                f"the images (source clean accuracy {source_acc:.1f}%): a weak poison; the "
                "official source recipe is tap:source_recipe=official",
                file=sys.stderr,
            )
        meta = {
            "form": "sample",
            "source_recipe": self.source_recipe,
            "source_clean_acc": source_acc,
            "source_epochs": epochs,
            "restarts": self.restarts,
            "targets": mapping.tolist(),
            "target_loss": best_loss,
            "target_rate": rate,
            "craft_seconds": opening.seconds(),
        }
        surrogate = (
            Surrogate.of(model, self.source, data.num_classes, data.image_shape)
            if self.source_recipe == "victim"
            else None
        )
        rows = torch.arange(len(data.y_train))
        return Poison(best.cpu().clamp(-self.eps, self.eps), rows, self.eps, meta, surrogate)

    def _best_restart(
        self,
        seen: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        generator: torch.Generator,
        ctx: CraftContext,
    ) -> tuple[torch.Tensor, float]:
        """Targeted PGD over the whole set from ``restarts`` random starts; the noise of the
        restart with the lowest target loss, and that loss."""
        best, best_loss = None, math.inf
        batches = torch.arange(len(x), device=ctx.device).split(self.batch_size)
        gradient_of = None
        if ctx.execution.eval_chunk:  # the same gradient, faster where the device says so
            augment, model = seen
            gradient_of = chunked_input_gradient(model, augment, ctx.execution.eval_chunk)
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
                    gradient_of=gradient_of,
                )
                bar.update()
            loss = self._target_loss(seen, x, target, delta, batches)
            bar.set_postfix(target_loss=f"{loss:.4f}")
            if loss < best_loss:
                best, best_loss = delta, loss
        bar.close()
        assert best is not None
        return best, best_loss

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


class Normalized(nn.Module):
    """``model`` on inputs standardized by fixed channel means and stds (the official TAP
    source sees normalized images; crafting still works in [0, 1] pixel units)."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def fit_to_training_images(self, x: torch.Tensor) -> None:
        """Fit a data-dependent init of ``model`` to the normalized images it will be fed."""
        fit = getattr(self.model, "fit_to_training_images", None)
        if callable(fit):
            fit(x, preprocess=self.normalize)


def official_source(
    spec: str, data: ImageData, ctx: CraftContext, epochs: int, generator: torch.Generator
) -> nn.Module:
    """The source model trained by the official TAP recipe (module docstring), in eval mode."""
    x = data.x_train.to(ctx.device)
    y = data.y_train.to(ctx.device)
    mean, std = channel_stats(data)
    model = Normalized(ARCHS.build(spec, data.num_classes, data.image_shape), mean, std)
    model.to(ctx.device)
    fit_to_training_images(model, x)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, official_milestones(epochs), gamma=0.1
    )
    augment = differentiable_shift_and_flip(mean.to(ctx.device))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator).to(ctx.device)
        for index in order.split(128):
            with training_precision(ctx.device, ctx.train_config.amp):
                loss = F.cross_entropy(model(augment(to_float(x[index]))).float(), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()
