"""``rem``: robust error-minimizing noise, Fu et al., "Robust Unlearnable Examples: Protecting
Data Against Adversarial Learning" (ICLR 2022).

Min-min-max: the noise δ (‖δ‖∞ ≤ ε) minimizes the source model's loss on its training images
even after an adversary adds a perturbation of radius ρ ≤ ε, so that adversarial training of
radius up to ρ (which undoes plain error-minimizing noise) still learns nothing.  Following the
official code (``generate_robust_em.py``, ``scripts/cifar10/gen_rem.sh``):

* ``train_steps`` (5000) source-model steps on batches of 128, SGD (momentum 0.9, weight decay
  5e-4) at lr 0.1, divided by 10 every ``lr_decay_every`` steps (2000, i.e. 2/5 of training).
* Every ``perturb_every`` (1) steps the batch's noise is crafted afresh: a uniform random start
  in the ε-ball, then ``steps`` (10) sign-gradient descent steps of ``alpha`` (ε/5 = 1.6/255).
  Each step descends the mean over ``samples`` (5) draws of the victim's crop-and-flip of x+δ
  (expectation over transformation), each draw perturbed by ``rho_steps`` (10) L∞ PGD ascent
  steps of ``rho_alpha`` (ρ/5 = 0.8/255) in radius ``rho`` (4/255, the main table's ρ_a) with a
  random start; the gradient passes through the adversarial perturbation as a constant, as in
  the official code (a first-order, Danskin-style step).
* The model then takes one SGD step on the adversarial example (same radius and steps) of the
  augmented x+δ: it is adversarially trained on the poisoned data.
* After training, the noise of the whole training set is regenerated with the final model.

Sample-wise only (the paper's setting).  ``augment=false`` drops the crop and flip (the draws
then differ only in the adversary's random start); ``rho=0`` (or ``rho_steps=0``) leaves out
the inner maximization: error-minimizing noise crafted with this loop, the paper's ablation.
The adversary is torchattacks' PGD, the one ``advtrain`` trains with, run in eval mode as the
official code runs its own.  The trained source model is kept with the poison.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from uebench.crafting import minimize_error, start_crafting
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison, Surrogate
from uebench.training import TrainConfig, standard_augmentation

#: Source steps between progress-bar loss readings.
PROGRESS_EVERY = 25
#: A batch's inputs and labels to the adversarially perturbed copies of them.
Adversary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class RobustErrorMinimizing(Method):
    """Robust error-minimizing (min-min-max) sample-wise noise."""

    crafts_by_gradient = True

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 10,
        alpha: float | None = None,
        rho: float = 4 / 255,
        rho_steps: int = 10,
        rho_alpha: float | None = None,
        samples: int = 5,
        train_steps: int = 5000,
        perturb_every: int = 1,
        lr: float = 0.1,
        lr_decay_every: int | None = None,
        batch_size: int = 128,
        source: str = "resnet18",
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        self.eps = check_eps(eps)
        if not 0 <= rho <= 1:
            raise UebenchError(f"rem: rho must be in [0, 1], e.g. 4/255; got {rho:g}")
        if steps < 1 or rho_steps < 0 or samples < 1 or train_steps < 0:
            raise UebenchError(
                "rem needs steps >= 1, rho_steps >= 0, samples >= 1, train_steps >= 0"
            )
        if (
            perturb_every < 1
            or batch_size < 1
            or (lr_decay_every is not None and lr_decay_every < 1)
        ):
            raise UebenchError("rem needs perturb_every, batch_size and lr_decay_every >= 1")
        self.steps = steps
        self.alpha = alpha if alpha is not None else eps / 5
        self.rho = rho
        self.rho_steps = rho_steps
        self.rho_alpha = rho_alpha if rho_alpha is not None else rho / 5
        self.samples = samples
        self.train_steps = train_steps
        self.perturb_every = perturb_every
        self.lr = lr
        self.lr_decay_every = (
            lr_decay_every if lr_decay_every is not None else max(1, round(0.4 * train_steps))
        )
        self.batch_size = batch_size
        self.source = source
        self.augment = augment
        self.seed = seed

    def crafting_passes(self, train_size: int, train: TrainConfig) -> tuple[float, float]:
        """``train_steps`` source steps, each on the adversary's examples (``rho_steps``
        passes and the step), the batch's noise re-crafted every ``perturb_every`` steps, and
        the whole set's noise once more at the end; crafting one image's noise takes
        ``steps`` × ``samples`` × (1 + ``rho_steps``) passes."""
        inner = self.rho_steps if self.rho > 0 else 0  # no adversary at ρ = 0
        noise = self.steps * self.samples * (1 + inner)
        crafted_batches = self.train_steps // self.perturb_every
        source = self.batch_size * (self.train_steps * (1 + inner) + crafted_batches * noise)
        passes = source + train_size * noise
        return passes, passes

    def adversary(self, model: nn.Module) -> Adversary | None:
        """The inner maximization: L∞ PGD of radius ρ against ``model`` (None when ρ or its
        steps are 0)."""
        if self.rho == 0 or self.rho_steps == 0:
            return None
        return torchattacks.PGD(
            model, eps=self.rho, alpha=self.rho_alpha, steps=self.rho_steps, random_start=True
        )

    def robust_noise(
        self,
        model: nn.Module,
        adversary: Adversary | None,
        augment: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """A batch's noise from a fresh random start: min over δ of the expected loss of the
        augmented, adversarially perturbed x+δ (``model`` in eval mode, as the official code)."""
        model.eval()
        start = (torch.rand(x.shape, generator=generator) * 2 - 1).to(x.device) * self.eps
        start = (x + start).clamp_(0, 1) - x

        def loss_of(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            # The draws ride in one batch: BatchNorm is in eval mode, so they stay independent.
            views = augment(inputs.clamp(0, 1).repeat(self.samples, 1, 1, 1))
            labels = labels.repeat(self.samples)
            if adversary is not None:
                # The adversarial shift enters as a constant: δ's gradient is the loss gradient
                # at the adversarial point, pulled back through the augmentation.
                views = views + (adversary(views.detach(), labels) - views.detach())
            return F.cross_entropy(model(views).float(), labels)

        return minimize_error(
            model, x, y, start, eps=self.eps, alpha=self.alpha, steps=self.steps, loss_of=loss_of
        )

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        # The whole training set, in dataset order.
        opening = start_crafting(data, ctx, seed=self.seed, source=self.source)
        generator, device, model = opening.generator, opening.device, opening.model
        x, y = opening.x, opening.y
        source = opening.source_steps(self.lr, self.batch_size)
        augment = (
            standard_augmentation(data.image_shape[-1], padding=None, flip=True)
            if self.augment
            else nn.Identity()
        )
        adversary = self.adversary(model)
        delta = torch.zeros_like(x)
        loss: torch.Tensor | None = None
        bar = ctx.bar(self.train_steps, "rem")
        for step in range(self.train_steps):
            for group in source.optimizer.param_groups:
                group["lr"] = self.lr * 0.1 ** (step // self.lr_decay_every)
            index = source.next_batch()
            if (step + 1) % self.perturb_every == 0:
                delta[index] = self.robust_noise(
                    model, adversary, augment, x[index], y[index], generator
                )
            images = augment((x[index] + delta[index]).clamp(0, 1))
            if adversary is not None:
                images = adversary(images, y[index])
            loss = source.step(images, y[index])
            bar.update()
            if step % PROGRESS_EVERY == 0:  # reading the loss waits for the device
                bar.set_postfix(loss=f"{float(loss):.4f}")
        bar.close()
        batches = torch.arange(len(x), device=device).split(self.batch_size)
        for index in ctx.track(batches, "rem:noise"):
            delta[index] = self.robust_noise(
                model, adversary, augment, x[index], y[index], generator
            )

        meta = {
            "form": "sample",
            "rho": self.rho,
            "train_steps": self.train_steps,
            "final_train_loss": None if loss is None else float(loss),
            "craft_seconds": opening.seconds(),
        }
        surrogate = Surrogate.of(model, self.source, data.num_classes, data.image_shape)
        rows = torch.arange(len(data.y_train))
        return Poison(delta.cpu().clamp(-self.eps, self.eps), rows, self.eps, meta, surrogate)
