"""``clean``: no noise, the baseline row of every grid."""

from __future__ import annotations

import torch

from uebench.data import ImageData
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.threat import ThreatModel


class Clean(Method):
    """The training images unchanged."""

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        rows = torch.full((len(data.y_train),), -1, dtype=torch.long)
        noise = torch.zeros(1, *data.image_shape)
        return Poison(noise, rows, self.threat_model(), {"form": "none"})

    def threat_model(self) -> ThreatModel:
        return ThreatModel.linf(0.0)
