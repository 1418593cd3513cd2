"""``clean``: no noise, the baseline row of every grid."""

from __future__ import annotations

import torch

from uebench.data import ImageData
from uebench.method import CraftContext, Method
from uebench.poison import Poison


class Clean(Method):
    """The training images unchanged."""

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        rows = torch.full((len(data.y_train),), -1, dtype=torch.long)
        return Poison(torch.zeros(1, *data.image_shape), rows, eps=0.0, meta={"form": "none"})
