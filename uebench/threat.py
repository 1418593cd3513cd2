"""Threat models: what a noise method may do to an image, checked exactly on its stored noise.

The field uses four kinds of budget, each per image, in [0, 1] pixel units:

* ``linf`` — every pixel changes by at most ε (error-minimizing noise, REM, TAP: 8/255);
* ``l2`` — the perturbation of the whole C×H×W image has Euclidean norm at most r (AR and LSP:
  1.0 on 32×32×3);
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
        existed, so old poisons give the same images).  L2 rounds to nearest too, but an image
        whose rounded change would exceed the radius is rounded toward the original instead,
        which can only shrink every pixel's change.  L0 and unbounded noise round to nearest:
        rounding never makes a zero change non-zero.
        """
        if self.norm == "linf":
            return add_noise_uint8(x, delta, self.budget)
        nearest = add_noise_uint8(x, delta)
        if self.norm != "l2" or not len(x):
            return nearest
        change = (nearest.float() - x.float()) / 255.0
        over = change.flatten(1).norm(dim=1) > float(self.budget)  # type: ignore[arg-type]
        if over.any():
            exact = (x[over].float() + delta[over].float() * 255.0).clamp(0, 255)
            moved = exact - x[over].float()
            nearest[over] = (x[over].float() + moved.trunc()).to(torch.uint8)
        return nearest
