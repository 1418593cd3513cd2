"""``random``: uniform noise in [−ε, ε], one draw per image (sample-wise) or per class."""

from __future__ import annotations

from typing import Literal

import torch

from uebench.data import ImageData
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison


class RandomNoise(Method):
    """Random noise baseline of Section 4.1."""

    def __init__(
        self, *, form: Literal["sample", "class"] = "sample", eps: float = 8 / 255, seed: int = 0
    ) -> None:
        self.form = form
        self.eps = check_eps(eps)
        self.seed = seed

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        generator = torch.Generator().manual_seed(self.seed)
        if self.form == "class":
            rows, count = data.y_train, data.num_classes
        else:
            rows, count = torch.arange(len(data.y_train)), len(data.y_train)
        delta = (torch.rand(count, *data.image_shape, generator=generator) * 2 - 1) * self.eps
        return Poison(delta, rows, self.eps, meta={"form": self.form})
