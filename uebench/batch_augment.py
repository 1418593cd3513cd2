"""The standard crop and flip, each image its own draw, for a whole batch in one gather.

Written by hand rather than kornia's ``RandomCrop`` + ``RandomHorizontalFlip``: kornia cuts each
image out with its own Python slice and reads the crop boxes back to the host (a device sync
per batch on a GPU), so a batch of N images costs N Python operations.  Here every output pixel's
source in the padded batch is computed at once and read with one ``gather``, the flip folded
into the column it reads.  On the project's CPU, one thread, crop after padding 4 + flip of
CIFAR images: 0.96 ms against kornia's 4.14 ms per batch of 256, 10.1 against 18.4 ms per
batch of 1024 (``benchmarks/batch_augment.py``); a GPU figure is not yet measured.  Offsets
are uniform over the 2·padding + 1 positions per axis, as torchvision's and kornia's are, and
the result is differentiable in the images (crafting sends its noise's gradient through it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: What each ``pad_mode`` of :class:`uebench.training.TrainConfig` pads with (``F.pad``'s mode).
PADDINGS = {"zeros": "constant", "reflect": "reflect"}


class BatchCropFlip(nn.Module):
    """Pad every side by ``padding`` (zeros or a reflection) and cut each image back to its
    size at its own random offset; with ``flip``, mirror each image left to right with
    probability 1/2.  The draws come from torch's global stream on the images' device."""

    def __init__(self, padding: int, flip: bool, pad_mode: str = "zeros") -> None:
        super().__init__()
        if padding < 0:
            raise ValueError(f"the crop's padding cannot be negative, got {padding}")
        if pad_mode not in PADDINGS:
            raise ValueError(f"pad_mode must be one of {', '.join(PADDINGS)}, got {pad_mode!r}")
        self.padding, self.flip, self.mode = padding, flip, PADDINGS[pad_mode]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        count, channels, height, width = images.shape
        pad, device = self.padding, images.device
        padded = F.pad(images, (pad, pad, pad, pad), mode=self.mode) if pad else images
        rows = torch.arange(height, device=device).view(1, height, 1)
        columns = torch.arange(width, device=device).view(1, 1, width)
        if pad:
            rows = rows + torch.randint(0, 2 * pad + 1, (count, 1, 1), device=device)
            columns = columns + torch.randint(0, 2 * pad + 1, (count, 1, 1), device=device)
        if self.flip:
            mirrored = torch.rand(count, 1, 1, device=device) < 0.5
            # Reading the window's columns right to left mirrors the crop.
            columns = torch.where(mirrored, columns.flip(-1), columns)
        source = (rows * (width + 2 * pad) + columns).reshape(-1, 1, height * width)
        source = source.expand(count, channels, height * width)
        flat = padded.reshape(count, channels, -1)
        return flat.gather(2, source).view(count, channels, height, width)
