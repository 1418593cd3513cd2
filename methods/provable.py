"""``pue``: provably unlearnable examples (Wang et al., 2024).

Error-minimizing noise (``emin``'s loop) crafted against a source model smoothed by random weight
perturbations, so that the noise keeps models *near* the source unable to learn, not only the
source itself: that is what lowers the certified (q, η)-learnability ``uebench certify`` measures.

* Noise levels σ_j = j·Δ for j = 0..J (Δ = ``sigma_step`` 0.05, J = ``levels`` 5).
* A source-model step accumulates the gradient over ``draws`` (M) weight draws per level and
  takes one SGD step with their mean.
* A noise step follows the sign of the input gradient summed over levels and ``noise_draws`` (u)
  draws per level; class-wise noise is the per-class mean of the per-sample updates.
* It starts as plain error-minimizing crafting and switches the weight perturbations on once
  the source model's accuracy on the perturbed crafting set exceeds ``switch_acc`` (50%); it
  stops when that error falls below ``stop_error`` (0.1).

The public code takes one optimizer (and one sign) step per noise level; this implementation
takes one step on the loss averaged over all levels.  Its
default M=100 and u=10 are the public code's defaults, and make a source-model step about
``1 + J·M`` = 501 forward/backward passes: use small sources (``source=[smallcnn:width=8]``) or
fewer draws on a CPU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn
from uebench.methods.error_minimizing import ErrorMinimizing

from uebench.crafting import CraftingStart, SmoothedSourceSteps, SourceModelSteps, WeightNoise
from uebench.errors import UebenchError


class _SmoothedSource(SmoothedSourceSteps):
    """The source model's steps plus the weight draws its noise steps use and the switch round."""

    input_noise: WeightNoise
    switched_at: int | None = None


class ProvablyUnlearnable(ErrorMinimizing):
    """Provably unlearnable examples: error-minimizing noise against a weight-smoothed source."""

    label = "pue"

    def __init__(
        self,
        *,
        form: Literal["sample", "class"] = "class",
        eps: float = 8 / 255,
        steps: int | None = None,
        alpha: float | None = None,
        model_steps: int = 20,
        stop_error: float | None = None,
        subset: float | None = None,
        max_rounds: int = 100,
        sigma_step: float = 0.05,
        levels: int = 5,
        draws: int = 100,
        noise_draws: int = 10,
        switch_acc: float = 0.5,
        lr: float = 0.1,
        batch_size: int = 128,
        source: str = "resnet18",
        seed: int = 0,
    ) -> None:
        super().__init__(
            form=form,
            eps=eps,
            steps=steps,
            alpha=alpha,
            model_steps=model_steps,
            stop_error=stop_error,
            subset=subset,
            max_rounds=max_rounds,
            lr=lr,
            batch_size=batch_size,
            source=source,
            seed=seed,
        )
        if sigma_step <= 0 or levels < 0:
            raise UebenchError(
                f"pue needs sigma_step > 0 and levels >= 0, got {sigma_step:g} and {levels}"
            )
        if draws < 1 or noise_draws < 1:
            raise UebenchError(
                f"pue needs draws >= 1 and noise_draws >= 1, got {draws}, {noise_draws}"
            )
        if not 0 <= switch_acc < 1:
            raise UebenchError(f"switch_acc must be in [0, 1), got {switch_acc:g}")
        self.sigma_step = sigma_step
        self.levels = levels
        self.draws = draws
        self.noise_draws = noise_draws
        self.switch_acc = switch_acc

    @property
    def sigmas(self) -> tuple[float, ...]:
        """The weight-noise levels σ_j = j·Δ, j = 0..J."""
        return tuple(j * self.sigma_step for j in range(self.levels + 1))

    def _round_passes(self, crafting: int) -> float:
        # With the weight perturbations on (the costliest round), a source step takes 1 + J·M
        # passes and a noise step 1 + J·u (σ = 0 is one pass).
        model = self.model_steps * self.batch_size * (1 + self.levels * self.draws)
        return model + crafting * (self.steps * (1 + self.levels * self.noise_draws) + 1 / 3)

    def _source_steps(self, opening: CraftingStart, model: nn.Module) -> SourceModelSteps:
        # Separate streams for the surrogate's and the noise's draws keep each reproducible
        # whatever the other consumes.
        model_draws = torch.Generator(device=opening.device).manual_seed(self.seed + 1)
        noise_draws = torch.Generator(device=opening.device).manual_seed(self.seed + 2)
        source = opening.source_steps(
            self.lr,
            self.batch_size,
            model=model,
            kind=_SmoothedSource,
            weight_noise=WeightNoise(self.sigmas, self.draws, model_draws),
        )
        assert isinstance(source, _SmoothedSource)
        source.input_noise = WeightNoise(self.sigmas, self.noise_draws, noise_draws)
        return source

    def _weight_noise(self, source: SourceModelSteps) -> WeightNoise | None:
        assert isinstance(source, _SmoothedSource)
        return source.input_noise if source.smoothing else None

    def _after_round(self, source: SourceModelSteps, rounds: int, error: float) -> None:
        assert isinstance(source, _SmoothedSource)
        if not source.smoothing and 1.0 - error > self.switch_acc:
            source.smoothing = True
            source.switched_at = rounds

    def _extra_meta(self, source: SourceModelSteps) -> dict[str, Any]:
        assert isinstance(source, _SmoothedSource)
        # None means the loop stopped before the weight perturbations were ever switched on:
        # the result is then plain error-minimizing noise.
        start = None if source.switched_at is None else source.switched_at + 1
        return {"smoothing_from_round": start}
