"""``stripes``: class-wise stripe noise, a complete example of a uebench noise method.

Every image of class k receives the same pattern: a sinusoidal grating with the class's own
orientation, phase and sign per colour channel, scaled to ±ε.  A fixed pattern per class is a
shortcut a network learns before the real features, the mechanism class-wise unlearnable noise
relies on; this plugin is an illustration of the plugin contract, not a published method.
"""

from __future__ import annotations

import math

import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison


class Stripes(Method):
    """Class-wise sinusoidal stripes within an L∞ ball of radius ε (an example plugin)."""

    def __init__(self, *, eps: float = 8 / 255, period: float = 4.0, seed: int = 0) -> None:
        # Keyword-only parameters are the spec's options: stripes:eps=16/255:period=6.
        self.eps = check_eps(eps)
        if period < 2:
            raise UebenchError(f"stripes: period must be at least 2 pixels, got {period:g}")
        self.period = period
        self.seed = seed

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        classes = data.num_classes
        channels, height, width = data.image_shape
        # A seeded generator of its own: the same spec gives the same poison on any machine.
        generator = torch.Generator().manual_seed(self.seed)
        angle = torch.rand(classes, 1, 1, generator=generator) * math.pi
        phase = torch.rand(classes, 1, 1, generator=generator) * 2 * math.pi
        sign = torch.randint(0, 2, (classes, channels, 1, 1), generator=generator) * 2.0 - 1.0
        angle, phase, sign = angle.to(ctx.device), phase.to(ctx.device), sign.to(ctx.device)
        rows = torch.arange(height, device=ctx.device, dtype=torch.float32).view(1, -1, 1)
        cols = torch.arange(width, device=ctx.device, dtype=torch.float32).view(1, 1, -1)
        position = cols * torch.cos(angle) + rows * torch.sin(angle)  # K × H × W
        wave = torch.sin(2 * math.pi * position / self.period + phase)
        delta = self.eps * sign * wave.unsqueeze(1)  # K × C × H × W, in [-ε, ε]
        # One noise row per class; each training image gets the row of its label.
        return Poison(delta, data.y_train, self.eps, {"form": "class", "period": self.period})
