"""The fast victim: airbench's network (Jordan, arXiv 2404.00498), written from its description.

A frozen 2×2 patch-whitening convolution (its filters are the eigenvectors of the covariance of
2×2 patches of the training images, scaled by the inverse square root of their eigenvalues, and
their negatives), GELU, then three groups of conv → 2×2 max-pool → BatchNorm → GELU → conv →
BatchNorm → GELU at widths ``w, 4w, 4w`` (64/256/256 at the default ``width=64``), a global
max-pool and a bias-free linear layer scaled by 1/9.  BatchNorm scales stay at 1 (only the
shifts learn); convolutions start with an identity (Dirac) part, as in the paper.

The whitening is fitted by :meth:`AirbenchNet.fit_to_training_images`, which the trainer calls
with the images the victim is given (the poisoned, filtered ones, as a data thief would have)
and crafting contexts call with the crafter's clean images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from uebench.errors import UebenchError

#: How many training images the whitening covariance is estimated from (the paper's 5000).
WHITENING_IMAGES = 5000
#: Added to each eigenvalue, relative to the mean patch variance: airbench's 5e-4 on images
#: normalized to unit variance, here on images in [0, 1] whatever their contrast.
WHITENING_EPS = 5e-4


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with the paper's settings: scale fixed at 1, tiny eps, running-average
    momentum 0.4 in PyTorch's convention (0.6 in the paper's)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=0.4)
        self.weight.requires_grad_(False)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, 3, padding="same", bias=False)
    # The identity part makes each group start close to a residual block.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(cin, cout)])
    return conv


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = _conv(cin, cout), _conv(cout, cout)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1, self.norm2 = _BatchNorm(cout), _BatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(self.front(x))

    def front(self, x: torch.Tensor) -> torch.Tensor:
        """The first convolution, pooled and normalized."""
        return self.norm1(self.pool(self.conv1(x)))

    def back(self, x: torch.Tensor) -> torch.Tensor:
        """The rest of the group, from :meth:`front`'s output."""
        return F.gelu(self.norm2(self.conv2(F.gelu(x))))


class AirbenchNet(nn.Module):
    """airbench's network for ``in_shape`` images; see the module docstring."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        channels, height, side = in_shape
        self.whiten = nn.Conv2d(channels, 2 * channels * 4, 2, bias=True)
        self.whiten.weight.requires_grad_(False)  # fitted to data, never trained
        nn.init.zeros_(self.whiten.bias)
        widths = (width, 4 * width, 4 * width)
        groups: list[nn.Module] = []
        cin, size = 2 * channels * 4, min(height, side) - 1
        for cout in widths:
            groups.append(_ConvGroup(cin, cout, pool=size >= 2))  # tiny inputs skip a pool
            cin, size = cout, size // 2 if size >= 2 else size
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.fitted_on = 0  # how many images the whitening was last fitted on

    @property
    def whitening_bias(self) -> nn.Parameter:
        """The whitening layer's bias: it trains, and the fast recipe freezes it after its
        first epochs (``TrainConfig.whiten_bias_epochs``)."""
        return self.whiten.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.groups[0]
        # The whitening and the convolution reading it run in fp32 even under bf16 autocast.
        # Whitening scales the directions the training images barely vary in by up to
        # 1/sqrt(eps), and bf16's 8-bit mantissa there let the network learn from what fp32
        # keeps at zero: clean training on grayscale CIFAR-10 (colour differences all zero)
        # reached 24.8% on the colour test images under mini in bf16, 45.7% with only the
        # whitening in fp32, 74.3% with the first convolution too (74.4% all in fp32), for
        # a few percent of bf16's speed-up (benchmarks/cpu_bf16.py).
        with torch.autocast(x.device.type, enabled=False):
            x = first.front(F.gelu(self.whiten(x.float())))
        out = self.groups[1:](first.back(x))
        return self.head(torch.amax(out, dim=(2, 3))) / 9

    @torch.no_grad()
    def fit_to_training_images(
        self,
        x: torch.Tensor,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Fit the whitening filters to 2×2 patches of the first 5000 of ``x`` (uint8
        N×C×H×W) as the network will see them (in [0, 1], then through ``preprocess`` when a
        wrapper feeds it transformed images): unit variance along each principal direction of
        the centred patches."""
        images = x[:WHITENING_IMAGES]
        if len(images) == 0:
            raise UebenchError("airbench's whitening needs at least one training image")
        dim = self.whiten.weight[0].numel()
        total = torch.zeros(dim, dtype=torch.float64, device=x.device)
        outer = torch.zeros(dim, dim, dtype=torch.float64, device=x.device)
        count = 0
        for chunk in images.split(1000):  # bounded memory: patches of 1000 images at a time
            seen = chunk.float().div(255)
            if preprocess is not None:
                seen = preprocess(seen)
            patches = F.unfold(seen, kernel_size=2)  # N × dim × L
            # Per-image float32 products (one batched matmul, no copy of the patches: several
            # times faster than one float64 product on a CPU), summed over chunks in float64.
            total += patches.sum((0, 2)).double()
            outer += torch.bmm(patches, patches.transpose(1, 2)).sum(0).double()
            count += patches.shape[0] * patches.shape[2]
        mean = total / count
        covariance = outer / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eps = WHITENING_EPS * float(covariance.diagonal().mean().clamp_min(1e-12))
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T.flip(0)
        weight = torch.cat((filters, -filters)).to(self.whiten.weight.dtype)
        self.whiten.weight.copy_(weight.reshape_as(self.whiten.weight))
        # Centre the patches through the bias, so whitened inputs start at zero mean.
        self.whiten.bias.copy_(-(weight @ mean.to(weight.dtype)))
        self.fitted_on = len(images)


def airbench(num_classes: int, in_shape: tuple[int, int, int], *, width: int = 64) -> nn.Module:
    """airbench's CIFAR-10 network (arXiv 2404.00498): patch whitening, widths w/4w/4w.

    ``width`` = the first group's channels (64 in the paper: 64/256/256).  Inputs of at least
    2×2; its whitening is fitted on the training images the trainer is given.
    """
    if len(in_shape) != 3 or min(in_shape) < 1:
        raise UebenchError(f"in_shape must be (C, H, W) with positive sizes, got {in_shape}")
    if width < 1:
        raise UebenchError(f"width must be at least 1, got {width}")
    if min(in_shape[1:]) < 2:
        raise UebenchError(
            f"airbench needs inputs of at least 2×2, got {in_shape[1]}×{in_shape[2]}"
        )
    return AirbenchNet(num_classes, in_shape, width)
