"""Threat models: what a noise method may do to an image, checked exactly on its stored noise.

The field uses four kinds of budget, each per image, in [0, 1] pixel units:

* ``linf`` — every pixel changes by at most ε (error-minimizing noise, REM, TAP: 8/255);
* ``l2`` — the perturbation of the whole C×H×W image has Euclidean norm at most r (on
  32×32×3: AR 1.0, LSP 6/255·√3072 ≈ 1.304);
* ``l0`` — at most k pixel *positions* change, in any channel and by any amount (OPS: one pixel);
* ``unbounded`` — any change (CUDA's per-class convolution), stored as the difference it makes.

Noise is always a bank of rows added to uint8 images (:class:`~uebench.poison.Poison`); the
threat model decides how a row is checked (:meth:`ThreatModel.violation`) and how the sum is
rounded back to 8 bits so that the *published* image stays within the budget
(:meth:`ThreatModel.apply`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from uebench.data import add_noise_uint8
from uebench.errors import UebenchError

Norm = Literal["linf", "l2", "l0", "unbounded"]
NORMS: tuple[str, ...] = ("linf", "l2", "l0", "unbounded")
#: Float slack of the stored-noise check (the rounding of a float32 norm, not a real excess).
TOLERANCE = 1e-5


@dataclass(frozen=True)
class ThreatModel:
    """A norm and its per-image budget (None for ``unbounded``)."""

    norm: Norm
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            valid = ", ".join(NORMS)
            raise UebenchError(f"unknown threat-model norm {self.norm!r}; valid: {valid}")
        if self.norm == "unbounded":
            if self.budget is not None:
                raise UebenchError("an unbounded threat model has no budget")
            return
        if self.budget is None or not math.isfinite(self.budget) or self.budget < 0:
            raise UebenchError(f"a {self.norm} budget must be finite and >= 0, got {self.budget}")
        if self.norm == "linf" and self.budget > 1:
            raise UebenchError(f"an L∞ budget is at most 1 (image units), got {self.budget:g}")
        if self.norm == "l0" and self.budget != int(self.budget):
            raise UebenchError(f"an L0 budget counts pixels, got {self.budget:g}")

    @classmethod
    def linf(cls, eps: float) -> ThreatModel:
        return cls("linf", float(eps))

    @classmethod
    def l2(cls, radius: float) -> ThreatModel:
        return cls("l2", float(radius))

    @classmethod
    def l0(cls, pixels: int) -> ThreatModel:
        return cls("l0", float(pixels))

    @classmethod
    def unbounded(cls) -> ThreatModel:
        return cls("unbounded")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ThreatModel:
        """Inverse of :meth:`as_dict` (a saved poison's or a record's ``threat_model``)."""
        budget = values.get("budget")
        return cls(str(values["norm"]), None if budget is None else float(budget))  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "budget": self.budget}

    def describe(self) -> str:
        """``L∞ ≤ 8/255``, ``L2 ≤ 1``, ``L0 ≤ 1 px`` or ``unbounded``: for tables and listings."""
        if self.norm == "unbounded":
            return "unbounded"
        budget = float(self.budget)  # type: ignore[arg-type]
        if budget == 0:
            return "no noise"
        if self.norm == "l0":
            return f"L0 ≤ {budget:g} px"
        if self.norm == "linf":
            on_grid = abs(budget * 255 - round(budget * 255)) < 1e-6 and budget not in (0.0, 1.0)
            return f"L∞ ≤ {round(budget * 255)}/255" if on_grid else f"L∞ ≤ {budget:g}"
        return f"L2 ≤ {budget:.4g}"

    def measure(self, delta: torch.Tensor) -> torch.Tensor:
        """Each row's size in this norm (R values); zeros for ``unbounded``."""
        flat = delta.detach().float().flatten(1)
        if self.norm == "linf":
            return flat.abs().amax(1) if flat.shape[1] else flat.new_zeros(len(flat))
        if self.norm == "l2":
            return flat.norm(dim=1)
        if self.norm == "l0":  # positions, not values: a pixel changed in any channel counts once
            return (delta.detach() != 0).any(1).flatten(1).sum(1).float()
        return flat.new_zeros(len(flat))

    def violation(self, delta: torch.Tensor) -> str | None:
        """None when every row of ``delta`` is within budget, else a line naming the worst row."""
        if self.norm == "unbounded" or not len(delta):
            return None
        sizes = self.measure(delta)
        worst = int(sizes.argmax())
        slack = 0.0 if self.norm == "l0" else TOLERANCE
        if float(sizes[worst]) <= float(self.budget) + slack:  # type: ignore[arg-type]
            return None
        return (
            f"noise row {worst} has {self.norm} size {float(sizes[worst]):.5g}, beyond the "
            f"budget {self.describe()}"
        )

    def allows(self, other: ThreatModel) -> bool:
        """Whether noise within ``other`` is also within this threat model."""
        if self.norm == "unbounded":
            return True
        if other.norm != self.norm:
            # Zero noise (the clean baseline) is within every budget.
            return other.norm in ("linf", "l2", "l0") and other.budget == 0
        return float(other.budget) <= float(self.budget) + TOLERANCE  # type: ignore[arg-type]

    def apply(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``x + delta`` as a published uint8 image that stays within the budget.

        L∞ rounds to the nearest level and clips to ⌊ε·255⌋ levels (as before threat models
        existed, so old poisons give the same images).  L2 rounds to nearest too, as AR's
        official code does; an image whose rounded change exceeds the radius then has only
        the pixels that buy the most norm for the least distortion moved one level back
        toward the original until it fits (:func:`fit_l2_levels`), so its published norm is
        the radius less at most one level's worth, not the truncation's ~6 % less.  L0 and
        unbounded noise round to nearest: rounding never makes a zero change non-zero.
        """
        if self.norm == "linf":
            return add_noise_uint8(x, delta, self.budget)
        nearest = add_noise_uint8(x, delta)
        if self.norm != "l2" or not len(x):
            return nearest
        radius = float(self.budget) * 255.0  # type: ignore[arg-type]
        change = nearest.float() - x.float()
        over = (change.flatten(1).square().sum(1) > radius**2).nonzero().flatten()
        # Chunks bound the sort's memory on a whole training set.
        for chunk in over.split(_L2_CHUNK):
            exact = (x[chunk].float() + delta[chunk].float() * 255.0).clamp(0, 255) - x[
                chunk
            ].float()
            fitted = fit_l2_levels(change[chunk].flatten(1), exact.flatten(1), radius)
            nearest[chunk] = (x[chunk].float() + fitted.view_as(exact)).to(torch.uint8)
        return nearest


#: Images fitted to an L2 radius at once (each costs a sort over its C·H·W pixels).
_L2_CHUNK = 2048


def fit_l2_levels(rounded: torch.Tensor, exact: torch.Tensor, radius: float) -> torch.Tensor:
    """Integer changes (rows of ``rounded``, levels) brought within L2 ``radius`` (levels).

    ``rounded`` is ``exact`` rounded to nearest.  Only pixels rounded *away* from the original
    are moved, one level toward it (which is ``exact`` rounded toward zero, so the result never
    exceeds the exact change's norm, itself within the radius).  Moving pixel i buys
    2|c_i| − 1 in squared norm and costs 1 − 2(|c_i| − |e_i|) in squared distance from the
    exact change; pixels are moved in increasing cost per norm bought, only as many as the
    row needs: a greedy knapsack that keeps the published noise as close to the crafted one
    as the radius allows.  Rows already within the radius are returned unchanged.
    """
    size = rounded.abs()
    movable = size > exact.abs() + 1e-6
    gain = torch.where(movable, 2 * size - 1, torch.zeros_like(size))
    cost = 1 - 2 * (size - exact.abs())
    order = torch.where(movable, cost / gain.clamp(min=1), torch.full_like(size, float("inf")))
    ranked = order.argsort(dim=1, stable=True)
    bought = gain.gather(1, ranked).cumsum(1)
    excess = rounded.square().sum(1, keepdim=True) - radius**2
    # A pixel is moved when the norm bought before it still leaves the row over the radius.
    needed = (bought - gain.gather(1, ranked)) < excess
    moved = torch.zeros_like(movable).scatter_(1, ranked, needed) & movable
    return rounded - moved.to(rounded.dtype) * rounded.sign()
