"""``cuda``: convolution-based unlearnable datasets (Sadasivan et al., "CUDA: Convolution-based
Unlearnable Datasets", CVPR 2023; official code vinusankars/Convolution-based-Unlearnability,
``final_filter_unlearnable.py``, ``get_filter_unlearnable``).

Algorithm (no model).  Each class gets a random k × k filter: every weight uniform in
[0, ``blur``] and one weight, at a random position, set to 1 (the code's
``center_parameter``); the same filter for every channel (the code draws a depthwise filter
and copies channel 0's to the others), no bias.  Every training image of class k, in [0, 1]
units, is convolved with class k's filter (zero padding, same size), divided by its own
maximum over all channels and pixels, and stored as 8 bits by truncation, as the code exports
it.

Defaults (the paper's CIFAR-10 settings): ``kernel=3``, ``blur=0.3``, every image
transformed (the code's ``mix=1.0``; the harness's ``partial`` countermeasure poisons a
fraction).

Threat model: unbounded (a transform, not small noise).  The poison is stored sample-wise as
the change it makes, ``published − x``, so caching, hashing and ``classes=`` work as for
additive noise; the rows are whole multiples of 1/255, so the published image is exact.

Departures: the filters come from a seeded torch generator, not NumPy's global one; the
convolution of a whole batch is one grouped convolution (each image and channel with its
class's filter) rather than one call per image.  An all-black image, whose filtered maximum is
0 (the code would divide by it and store NaN), stays black.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.threat import ThreatModel

#: The weight set at a random position of every filter (the code's ``center_parameter``).
PEAK = 1.0
#: Images per device batch.
BATCH = 4096


class ConvolutionBased(Method):
    """Every image convolved with a random filter of its class."""

    def __init__(self, *, kernel: int = 3, blur: float = 0.3, seed: int = 0) -> None:
        if kernel < 1 or kernel % 2 == 0:
            raise UebenchError(f"cuda: kernel must be an odd size >= 1, got {kernel}")
        if not 0 <= blur < math.inf:
            raise UebenchError(f"cuda: blur must be >= 0, got {blur:g}")
        self.kernel = kernel
        self.blur = blur
        self.seed = seed

    def threat_model(self) -> ThreatModel:
        return ThreatModel.unbounded()

    def filters(self, num_classes: int) -> torch.Tensor:
        """The per-class filters (classes × kernel × kernel), the same for every channel."""
        generator = torch.Generator().manual_seed(self.seed)
        weights = torch.rand(num_classes, self.kernel**2, generator=generator) * self.blur
        peak = torch.randint(self.kernel**2, (num_classes,), generator=generator)
        weights[torch.arange(num_classes), peak] = PEAK
        return weights.view(num_classes, self.kernel, self.kernel)

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        filters = self.filters(data.num_classes).to(ctx.device)
        delta = torch.empty(data.x_train.shape)
        for start in range(0, len(data.y_train), BATCH):
            x = data.x_train[start : start + BATCH].to(ctx.device)
            y = data.y_train[start : start + BATCH].to(ctx.device)
            published = class_convolution(x, filters[y])
            delta[start : start + len(x)] = ((published - x.float()) / 255.0).cpu()
        meta = {"form": "sample", "kernel": self.kernel, "blur": self.blur}
        return Poison(delta, torch.arange(len(data.y_train)), self.threat_model(), meta)


def class_convolution(x: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """uint8 images ``x`` (N × C × H × W), each convolved with its own filter (N × k × k),
    normalized by its maximum and truncated to 8 bits, as float levels in [0, 255]."""
    count, channels, height, width = x.shape
    kernel = filters.shape[-1]
    # One grouped convolution: every (image, channel) plane is a group with its image's filter.
    planes = x.float().div(255.0).reshape(1, count * channels, height, width)
    weight = filters.repeat_interleave(channels, 0).unsqueeze(1)
    out = F.conv2d(planes, weight, padding=kernel // 2, groups=count * channels)
    out = out.view(count, channels, height, width)
    peak = out.amax((1, 2, 3), keepdim=True)
    out = torch.where(peak > 0, out / peak.clamp_min(torch.finfo(out.dtype).tiny), 0.0)
    return (out * 255.0).clamp(0, 255).floor()
