"""The standard crop and flip, each image its own draw, for a whole batch in one gather.

Written by hand rather than kornia's ``RandomCrop`` + ``RandomHorizontalFlip``: kornia turns the
crop boxes into Python lists and cuts each image out with its own Python slice, so a batch of N
images costs N Python operations (on a GPU, N slices the host queues).  Here every output pixel's
source in the padded batch is computed at once and read with one ``gather``, the flip folded
into the column it reads.  On the project's CPU, one thread, crop after padding 4 + flip of
CIFAR images: 3.9× kornia's speed per batch of 256, 2.1× per batch of 1024
(``benchmarks/batch_augment.py``); a GPU figure is not yet measured.  Offsets
are uniform over the 2·padding + 1 positions per axis, drawn as kornia draws them: on a CPU the
same seed gives kornia's crops and flips to the pixel (so no cell or poison changes); on a GPU
they are drawn on the device.  The result is differentiable in the images (crafting sends its
noise's gradient through it).
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
        # The draws kornia makes, in its order (left, top, flip; uniform [0, 1) floats scaled
        # and floored in float32), so that on a CPU the crops and flips are kornia's to the
        # pixel; on a GPU they are drawn there, without a host copy.
        positions = 2 * pad + 1
        if pad:
            left = (torch.rand(count, device=device) * positions).floor().long()
            top = (torch.rand(count, device=device) * positions).floor().long()
            rows = rows + top.view(count, 1, 1)
            columns = columns + left.view(count, 1, 1)
        if self.flip:
            mirrored = (torch.rand(count, device=device) < 0.5).view(count, 1, 1)
            # Reading the window's columns right to left mirrors the crop.
            columns = torch.where(mirrored, columns.flip(-1), columns)
        source = (rows * (width + 2 * pad) + columns).reshape(-1, 1, height * width)
        source = source.expand(count, channels, height * width)
        flat = padded.reshape(count, channels, -1)
        return flat.gather(2, source).view(count, channels, height, width)
