"""``mix``: two noise sets combined per image (Appendix F, Table 5).

``combine=choose`` gives each image the noise of one of the two sets at random (Δc1 ∨ Δc2: two
users, or an upgraded noise set); ``combine=add`` adds both noises element-wise and clips the sum
to the larger ε (Δc1 + Δu).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.registry import METHODS
from uebench.threat import ThreatModel


def _per_image(poison: Poison) -> torch.Tensor:
    """N×C×H×W noise of every image (zero where the poison leaves an image clean)."""
    noise = torch.zeros(len(poison.rows), *poison.delta.shape[1:])
    hit = poison.rows >= 0
    noise[hit] = poison.delta[poison.rows[hit]]
    return noise


class Mixture(Method):
    """Two methods' noise mixed per image: one of them at random, or their sum."""

    nested_specs: ClassVar[dict[str, str]] = {"first": "methods", "second": "methods"}

    def __init__(
        self,
        *,
        first: str = "emin:form=class",
        second: str = "emin:form=class:seed=1",
        combine: Literal["choose", "add"] = "choose",
        seed: int = 0,
    ) -> None:
        self.first = first
        self.second = second
        self.combine = combine
        self.seed = seed

    def threat_model(self) -> ThreatModel:
        """The larger of the parts' L∞ budgets (both parts must be L∞ noise)."""
        parts = [METHODS.build(spec).threat_model() for spec in (self.first, self.second)]
        if any(part is None or part.norm != "linf" for part in parts):
            shown = ", ".join(part.describe() if part else "undeclared" for part in parts)
            raise UebenchError(f"mix combines L∞ noise only; its parts are {shown}")
        return ThreatModel.linf(max(float(part.budget) for part in parts))  # type: ignore[union-attr,arg-type]

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        self.threat_model()  # L∞ parts only, before any crafting
        a, b = ctx.craft(self.first, data), ctx.craft(self.second, data)
        meta = {
            "form": f"mixture-{self.combine}",
            "parts": [a.content_hash(), b.content_hash()],
        }
        if self.combine == "add":
            eps = max(a.eps, b.eps)
            delta = (_per_image(a) + _per_image(b)).clamp(-eps, eps)
            rows = torch.where((a.rows >= 0) | (b.rows >= 0), torch.arange(len(a.rows)), -1)
            return Poison(delta, rows, eps, meta)
        generator = torch.Generator().manual_seed(self.seed)
        pick_second = torch.rand(len(a.rows), generator=generator) < 0.5
        rows = torch.where(pick_second, torch.where(b.rows >= 0, b.rows + len(a.delta), -1), a.rows)
        meta["second_share"] = float(pick_second.float().mean())
        return Poison(torch.cat([a.delta, b.delta]), rows, max(a.eps, b.eps), meta)
