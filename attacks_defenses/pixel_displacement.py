"""``coin``: random pixel displacement with bilinear interpolation (COIN; Wang et al., "Corrupting
Convolution-based Unlearnable Datasets with Pixel-based Image Transformations", 2023; AAAI 2025
as "Detecting and Corrupting Convolution-based Unlearnable Examples", Li, Wang et al.).

Every output pixel (i, j) reads the input at (i + Δi, j + Δj), with Δi, Δj drawn independently
per pixel from U(−α, α), the same for all channels, by bilinear interpolation of its four
neighbours.  This is a random matrix multiplying each image, different for every image and every
epoch, which breaks the class-wise multiplicative (convolution) noise of CUDA-like poisons.
"""

from __future__ import annotations

import torch

from uebench.countermeasure import Countermeasure
from uebench.errors import UebenchError


def _wrapped_neighbours(
    coords: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lower and upper neighbour indices and the upper one's weight, for coordinates that leave
    the image wrapped around as scipy's ``map_coordinates(mode="wrap")`` does (COIN's code):
    the first and last pixel overlap, so the period is ``size − 1``, not ``size``."""
    if size == 1:
        zero = torch.zeros_like(coords, dtype=torch.long)
        return zero, zero, torch.zeros_like(coords)
    wrapped = torch.remainder(coords, size - 1)
    lower = wrapped.floor()
    weight = wrapped - lower
    lower = lower.long().clamp(0, size - 2)  # remainder can round up to size − 1 in float
    return lower, lower + 1, weight


def displace_pixels(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of N×C×H×W ``x`` at (row + ``dy``, column + ``dx``) per pixel.

    ``dy`` and ``dx`` are N×H×W offsets in pixels, shared by the channels of an image.  Written
    with gathers rather than ``grid_sample``, which has no wrap-around padding.
    """
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) + dy
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) + dx
    top, bottom, row_weight = _wrapped_neighbours(rows, h)
    left, right, col_weight = _wrapped_neighbours(cols, w)
    flat = x.reshape(n, c, h * w)

    def sample(r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        index = (r * w + q).view(n, 1, h * w).expand(n, c, h * w)
        return flat.gather(2, index).view(n, c, h, w)

    row_weight, col_weight = row_weight.unsqueeze(1), col_weight.unsqueeze(1)
    upper = sample(top, left) * (1 - col_weight) + sample(top, right) * col_weight
    lower = sample(bottom, left) * (1 - col_weight) + sample(bottom, right) * col_weight
    return upper * (1 - row_weight) + lower * row_weight


class PixelDisplacement(Countermeasure):
    """COIN: move every pixel by a random sub-pixel offset in [−α, α] (α 2, the paper's).

    Applied to each training batch after crop+flip, with fresh offsets every time, as the
    official code's transform does (its ``severity`` 4 is α = 2.0; severities 1–7 are α = 0.8 to
    3.2 in steps of 0.4).  As there, the result is clipped to [0, 1] and truncated to the
    uint8 grid (⌊255·v⌋/255), and coordinates that leave the image wrap around.
    """

    def __init__(self, *, alpha: float = 2.0) -> None:
        if not alpha > 0:
            raise UebenchError(f"coin alpha must be a positive number of pixels, got {alpha:g}")
        self.alpha = alpha

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        offsets = (torch.rand(2, n, h, w, device=x.device, dtype=x.dtype) * 2 - 1) * self.alpha
        moved = displace_pixels(x, offsets[0], offsets[1]).clamp(0, 1)
        # The tolerance keeps a flat region on its level: float32 interpolation between equal
        # neighbours can land one ulp below k/255, which plain truncation would move to k − 1.
        return torch.floor(moved * 255 + 1e-3) / 255, y
