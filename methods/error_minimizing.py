"""``emin``: error-minimizing noise by PGD, Algorithm 1 of Huang et al. (ICLR 2021).

Alternate ``model_steps`` (M) SGD steps on the source model with ``steps`` (T) sign-gradient
descent steps on δ over the crafting set, until the source model's error on the perturbed
crafting set falls below ``stop_error`` (λ).  Defaults follow Appendix B: T=20, λ=0.01 on the
whole training set sample-wise; T=1, λ=0.1 on a stratified 20% subset class-wise; α=ε/10, M=10.
Class-wise noise δ_k is the mean of the per-sample updates of class k in each batch.
``augment=true`` (not in the paper) crafts through the victim's random crop and flip
(:class:`~uebench.crafting.ThroughAugmentation`), which small images need.

The trained source model is kept with the poison (:class:`~uebench.poison.Surrogate`) so that
``uebench certify`` can measure it.  The ``_source_steps``, ``_weight_noise``, ``_after_round``
and ``_extra_meta`` hooks let a variant (``pue``) change the loop without copying it.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from uebench.crafting import (
    CraftingStart,
    SourceModelSteps,
    ThroughAugmentation,
    WeightNoise,
    alternate,
    class_mean,
    minimize_error,
    start_crafting,
)
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps, check_fraction
from uebench.poison import Poison, Surrogate
from uebench.training import TrainConfig


class ErrorMinimizing(Method):
    """Sample-wise (``form=sample``) or class-wise (``form=class``) error-minimizing noise."""

    crafts_by_gradient = True

    #: The name progress bars show.
    label = "emin"

    def __init__(
        self,
        *,
        form: Literal["sample", "class"] = "sample",
        eps: float = 8 / 255,
        steps: int | None = None,
        alpha: float | None = None,
        model_steps: int = 10,
        stop_error: float | None = None,
        subset: float | None = None,
        max_rounds: int = 100,
        lr: float = 0.1,
        batch_size: int = 128,
        source: str = "resnet18",
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        self.form = form
        self.eps = check_eps(eps)
        self.steps = steps if steps is not None else (20 if form == "sample" else 1)
        self.alpha = alpha if alpha is not None else eps / 10
        self.model_steps = model_steps
        self.stop_error = (
            stop_error if stop_error is not None else (0.01 if form == "sample" else 0.1)
        )
        self.subset = check_fraction(
            "subset", subset if subset is not None else (1.0 if form == "sample" else 0.2)
        )
        self.max_rounds = max_rounds
        self.lr = lr
        self.batch_size = batch_size
        self.source = source
        self.augment = augment
        self.seed = seed
        if self.steps < 1 or self.model_steps < 0 or self.max_rounds < 1:
            raise UebenchError("emin needs steps >= 1, model_steps >= 0 and max_rounds >= 1")

    def crafting_passes(self, train_size: int, train: TrainConfig) -> tuple[float, float]:
        """From one plain round to ``max_rounds`` rounds (the loop stops once the error is
        below ``stop_error``); a round is ``model_steps`` source steps of a batch, ``steps``
        noise steps over the crafting subset and a forward pass over it to measure the error
        (a third of a forward-and-backward pass)."""
        crafting = round(self.subset * train_size)
        first = ErrorMinimizing._round_passes(self, crafting)
        return first, self.max_rounds * self._round_passes(crafting)

    def _round_passes(self, crafting: int) -> float:
        """Image passes of one round over a crafting subset of ``crafting`` images (at most:
        a variant may count its costliest round)."""
        return self.model_steps * self.batch_size + crafting * (self.steps + 1 / 3)

    def _source_steps(self, opening: CraftingStart, model: nn.Module) -> SourceModelSteps:
        """The source model's SGD steps; ``model`` is the source as crafting sees it."""
        return opening.source_steps(self.lr, self.batch_size, model=model)

    def _weight_noise(self, source: SourceModelSteps) -> WeightNoise | None:
        """The weight perturbations the noise steps average over (none for plain emin)."""
        return None

    def _after_round(self, source: SourceModelSteps, rounds: int, error: float) -> None:
        """Called after every round that did not stop the loop."""

    def _extra_meta(self, source: SourceModelSteps) -> dict[str, Any]:
        return {}

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        opening = start_crafting(data, ctx, seed=self.seed, source=self.source, subset=self.subset)
        device, model = opening.device, opening.model
        crafting, x, y = opening.indices, opening.x, opening.y
        # The surrogate kept with the poison is ``model``; crafting sees it through the
        # augmentation when asked (the wrapper shares its parameters).
        seen = ThroughAugmentation(model, data.image_shape[-1]) if self.augment else model
        source = self._source_steps(opening, seen)
        if self.form == "sample":
            delta = torch.zeros_like(x)
            noise_of = lambda index: delta[index]  # noqa: E731
        else:
            delta = torch.zeros(data.num_classes, *data.image_shape, device=device)
            noise_of = lambda index: delta[y[index]]  # noqa: E731

        def update_noise(index: torch.Tensor) -> None:
            updated = minimize_error(
                seen,
                x[index],
                y[index],
                noise_of(index),
                eps=self.eps,
                alpha=self.alpha,
                steps=self.steps,
                weight_noise=self._weight_noise(source),
            )
            if self.form == "sample":
                delta[index] = updated
            else:
                delta.copy_(class_mean(delta, updated, y[index]).clamp_(-self.eps, self.eps))

        rounds, error = alternate(
            source,
            x,
            y,
            noise_of,
            update_noise,
            model_steps=self.model_steps,
            stop_error=self.stop_error,
            max_rounds=self.max_rounds,
            bar=ctx.bar(self.max_rounds, f"{self.label}:{self.form}"),
            on_round=lambda rounds, error: self._after_round(source, rounds, error),
        )

        if self.form == "sample":
            bank = torch.zeros(len(data.y_train), *data.image_shape)
            bank[crafting] = delta.cpu()
            rows = torch.arange(len(data.y_train))
        else:
            bank, rows = delta.cpu(), data.y_train.clone()
        meta = {
            "form": self.form,
            "rounds": rounds,
            "final_error": error,
            "converged": error < self.stop_error,
            "craft_seconds": opening.seconds(),
            **self._extra_meta(source),
        }
        surrogate = Surrogate.of(model, self.source, data.num_classes, data.image_shape)
        return Poison(bank.clamp(-self.eps, self.eps), rows, self.eps, meta, surrogate)
