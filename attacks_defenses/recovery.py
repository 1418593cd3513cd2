"""``recover:eta=E``: the recovery attack on a model trained on unlearnable data (Wang et al.).

After normal training on the poisoned set, fine-tune the victim θ̂ on a small clean set (default
a stratified 20% of the clean training images) with SGD, and after every step project the
trainable parameters back to ℓ2 distance η of θ̂: onto the sphere ‖θ−θ̂‖ = η (``project=sphere``,
what the public code does) or into the ball ‖θ−θ̂‖ ≤ η (``project=ball``).  BatchNorm running
statistics are buffers, outside the projection, and re-estimate freely on the clean set, as in
the public code.  The cell's ``final_acc`` is the recovered model's clean test accuracy.

The notes also carry, for comparison:

* ``baseline_acc`` — the same projected fine-tuning from a random initialization (within η of
  that initialization), and ``scratch_acc`` — the same fine-tuning from a random initialization
  with no projection: what the clean set alone teaches.
* ``directions_acc`` — the cheap variant: the best of K random directions at distance η from θ̂,
  chosen by accuracy on the clean set; ``directions_oracle_acc`` chooses by test accuracy as
  the public code does (an optimistic upper bound, not an attack an attacker can run).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from uebench.countermeasure import Countermeasure, TrainingContext, TrainSet
from uebench.data import stratified_indices, to_float
from uebench.errors import UebenchError
from uebench.method import check_fraction
from uebench.precision import autocast
from uebench.registry import ARCHS
from uebench.training import accuracy, standard_augmentation


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the ℓ2 distance is measured over (BatchNorm statistics excluded)."""
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def distance(params: list[torch.Tensor], anchor: list[torch.Tensor]) -> float:
    """ℓ2 distance between two parameter lists, as one flat vector."""
    squares = sum(float((p - a).double().pow(2).sum()) for p, a in zip(params, anchor, strict=True))
    return squares**0.5


@torch.no_grad()
def project_(
    params: list[torch.Tensor],
    anchor: list[torch.Tensor],
    eta: float,
    mode: Literal["sphere", "ball"] = "sphere",
) -> float:
    """Move ``params`` in place to ℓ2 distance η of ``anchor`` (sphere) or within it (ball).

    Returns the distance before projecting.  At distance 0 the sphere has no direction to
    scale along, so the parameters are left at the anchor.
    """
    before = distance(params, anchor)
    if before == 0 or (mode == "ball" and before <= eta):
        return before
    scale = eta / before
    for param, origin in zip(params, anchor, strict=True):
        param.copy_(origin + (param - origin) * scale)
    return before


class Recovery(Countermeasure):
    """Recovery attack: fine-tune the trained model on clean data within ℓ2 distance eta of it."""

    def __init__(
        self,
        *,
        eta: float = 1.0,
        fraction: float = 0.2,
        clean: Literal["train", "test"] = "train",
        epochs: int | None = None,
        lr: float = 0.01,
        batch_size: int = 128,
        project: Literal["sphere", "ball"] = "sphere",
        grad_clip: float = 5.0,
        baseline: bool = True,
        directions: int = 20,
        seed: int = 0,
    ) -> None:
        if not eta > 0:
            raise UebenchError(f"recover needs eta > 0, got {eta:g}")
        if epochs is not None and epochs < 1:
            raise UebenchError(f"recover needs epochs >= 1, got {epochs}")
        if lr <= 0 or batch_size < 1 or grad_clip <= 0 or directions < 0:
            raise UebenchError(
                "recover needs lr > 0, batch_size >= 1, grad_clip > 0, directions >= 0"
            )
        self.eta = eta
        self.fraction = check_fraction("fraction", fraction)
        self.clean = clean
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.project = project
        self.grad_clip = grad_clip
        self.baseline = baseline
        self.directions = directions
        self.seed = seed

    def after_training(
        self, model: nn.Module, train: TrainSet, context: TrainingContext
    ) -> dict[str, Any]:
        """Fine-tune ``model`` in place under the projection; return the notes listed above."""
        started = time.perf_counter()
        device = context.device
        x_clean, y_clean = self._clean_set(train, context)
        epochs = self.epochs if self.epochs is not None else context.config.whole_epochs
        notes: dict[str, Any] = {
            "recover_eta": self.eta,
            "recover_projection": self.project,
            "recover_clean_set": self.clean,
            "recover_clean_size": len(y_clean),
            "recover_epochs": epochs,
        }
        config = context.config

        def evaluate(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
            return accuracy(m, x, y, device, config.eval_batch_size, config.amp)

        notes["poisoned_clean_set_acc"] = evaluate(model, x_clean, y_clean)
        if self.directions:
            notes.update(self._random_directions(model, x_clean, y_clean, context, evaluate))
        if self.baseline:
            for name, projected in (("baseline_acc", True), ("scratch_acc", False)):
                fresh = self._fresh_model(context)
                anchor = [p.detach().clone() for p in trainable(fresh)] if projected else None
                self._finetune(fresh, anchor, x_clean, y_clean, epochs, context)
                notes[name] = evaluate(fresh, *context.test)

        anchor = [p.detach().clone() for p in trainable(model)]
        notes["recover_steps"] = self._finetune(model, anchor, x_clean, y_clean, epochs, context)
        notes["recover_distance"] = distance(trainable(model), anchor)
        notes["recover_seconds"] = time.perf_counter() - started
        return notes

    def _clean_set(
        self, train: TrainSet, context: TrainingContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.clean == "test":
            # The public code's default recovery set; it is also the set the result is
            # measured on, so the recovered accuracy is optimistic.
            return context.test
        keep = stratified_indices(train.y, max(1, round(self.fraction * len(train.y))), self.seed)
        return train.clean_x[keep], train.y[keep]

    def _fresh_model(self, context: TrainingContext) -> nn.Module:
        # A scoped seed: the baseline must not shift the global random stream of the cell.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            image_shape = tuple(context.test[0].shape[1:])
            model = ARCHS.build(context.arch, context.num_classes, image_shape)
        return model.to(context.device)

    def _finetune(
        self,
        model: nn.Module,
        anchor: list[torch.Tensor] | None,
        x: torch.Tensor,
        y: torch.Tensor,
        epochs: int,
        context: TrainingContext,
    ) -> int:
        """SGD (the victim's momentum and weight decay, cosine schedule) with the projection
        after every step when ``anchor`` is given; returns the number of steps."""
        config = context.config
        device = context.device
        model.to(device)
        params = trainable(model)
        optimizer = torch.optim.SGD(
            params, lr=self.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        augment = standard_augmentation(x.shape[-1], config.crop_padding, config.flip)
        generator = torch.Generator().manual_seed(self.seed)
        x_dev, y_dev = x.to(device), y.to(device)
        steps = 0
        # The augmentation draws from the global stream: seeding it here gives the recovery and
        # both baselines the same crops and flips, so they differ only by start and projection.
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for _ in range(epochs):
                model.train()
                order = torch.randperm(len(x), generator=generator).to(device)
                for index in order.split(self.batch_size):
                    images = augment(to_float(x_dev[index]))
                    with autocast(device, config.amp):
                        loss = F.cross_entropy(model(images).float(), y_dev[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                    optimizer.step()
                    if anchor is not None:
                        project_(params, anchor, self.eta, self.project)
                    steps += 1
                schedule.step()
        return steps

    @torch.no_grad()
    def _random_directions(
        self,
        model: nn.Module,
        x_clean: torch.Tensor,
        y_clean: torch.Tensor,
        context: TrainingContext,
        evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], float],
    ) -> dict[str, Any]:
        """Best of K random directions at distance η, by clean-set and by test accuracy."""
        probe = copy.deepcopy(model)
        params = trainable(probe)
        anchor = [p.detach().clone() for p in params]
        generator = torch.Generator().manual_seed(self.seed)
        best_clean, chosen_test, oracle = -1.0, float("nan"), -1.0
        for _ in range(self.directions):
            noise = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
            norm = sum(float(n.double().pow(2).sum()) for n in noise) ** 0.5
            for param, origin, step in zip(params, anchor, noise, strict=True):
                param.copy_(origin + step * (self.eta / norm))
            clean_acc = evaluate(probe, x_clean, y_clean)
            test_acc = evaluate(probe, *context.test)
            oracle = max(oracle, test_acc)
            if clean_acc > best_clean:
                best_clean, chosen_test = clean_acc, test_acc
        return {
            "directions": self.directions,
            "directions_acc": chosen_test,
            "directions_clean_set_acc": best_clean,
            "directions_oracle_acc": oracle,
        }
