"""``ops``: One-Pixel Shortcut (Wu et al., "One-Pixel Shortcut: on the Learning Preference of
Deep Neural Networks", ICLR 2023; official code cychomatica/One-Pixel-Shotcut, ``perturb.py``).

Algorithm (no model).  For each class, every pixel position p and every target colour c — a
corner of the colour cube, each channel 0 or 1 (two colours for one-channel images) — is scored
by the change setting p to c makes over that class's images, ``|c − x_p|`` taken over the
class's images and channels together: its mean divided by its standard deviation (a large
change that is the same in every image).  The best (position, colour) pair is set in every
image of the class.  As in the official search, classes are taken in label order and a pair
chosen by an earlier class is excluded for the later ones, so no two classes share a shortcut.

Defaults: ``pixels=1`` (the paper's and the code's ``sparsity=1``).

Threat model: L0 with a budget of ``pixels`` pixel positions per image, unbounded in value.
The noise is stored sample-wise (one row per image): ``target − x`` at the chosen pixel and
zero elsewhere, exactly representable in uint8, so the published image holds the target
colour.

Departures from the official code, each a fix of something that only works on CIFAR-10:
the search loops over the dataset's classes (the code and APBench loop over exactly ten), any
image size (the code indexes ``point // H, point % H``, right only for square images) and any
channel count (the code builds three-channel colours).  The score is computed from per-class
means and variances in one pass over the data, vectorized over positions and colours, not
with a Python loop over pixels.  Where a class's change has zero variance the code divides
0/0 or x/0 (NaN or inf); here a zero change scores 0 and a constant non-zero change scores
+inf (the most consistent shortcut there is).  With ``pixels > 1`` the code may pick the same
position twice with two colours (the second overwriting the first); here each class's pixels
are distinct positions.
"""

from __future__ import annotations

import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.threat import ThreatModel

#: Images per device batch when accumulating the class statistics.
BATCH = 4096


class OnePixelShortcut(Method):
    """Per class, the pixel and corner colour that change its images most consistently."""

    def __init__(self, *, pixels: int = 1) -> None:
        if pixels < 1:
            raise UebenchError(f"ops: pixels must be at least 1, got {pixels}")
        self.pixels = pixels

    def threat_model(self) -> ThreatModel:
        return ThreatModel.l0(self.pixels)

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        channels, height, width = data.image_shape
        if self.pixels > height * width:
            raise UebenchError(
                f"ops: pixels={self.pixels} exceeds the {height}×{width} pixels of an image"
            )
        mean, variance, counts = class_statistics(data, ctx.device)
        colours = corner_colours(channels, ctx.device, mean.dtype)
        claimed = torch.zeros(len(colours), height, width, dtype=torch.bool, device=ctx.device)
        # Per class: (row, col, colour index) of each chosen pixel; -1 for classes without images.
        choice = torch.full((data.num_classes, self.pixels, 3), -1, dtype=torch.long)
        for label in range(data.num_classes):
            if counts[label] == 0:
                continue
            score = shortcut_score(mean[label], variance[label], colours)
            score[claimed] = -torch.inf
            for k in range(self.pixels):
                best = int(torch.argmax(score))
                if score.flatten()[best] == -torch.inf:
                    raise UebenchError(
                        f"ops: no unclaimed (pixel, colour) pair is left for class {label}"
                    )
                colour, position = divmod(best, height * width)
                row, col = divmod(position, width)
                choice[label, k] = torch.tensor([row, col, colour])
                claimed[colour, row, col] = True
                score[:, row, col] = -torch.inf  # a class's pixels are distinct positions
        delta = shortcut_noise(data.x_train, data.y_train, choice, colours.cpu().float())
        # Per class, each shortcut as [row, col, colour index]; a colour index's bits are the
        # channels set to 1, first channel most significant.
        meta = {"form": "sample", "shortcuts": choice.tolist()}
        return Poison(delta, torch.arange(len(data.y_train)), self.threat_model(), meta)


def class_statistics(
    data: ImageData, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class mean and variance of every channel and pixel ([0, 1] units), and class sizes.

    Two passes (mean, then squared deviations) rather than E[x²] − E[x]², which cancels
    catastrophically for the near-constant pixels the score is looking for.
    """
    classes, shape = data.num_classes, data.image_shape
    counts = torch.bincount(data.y_train, minlength=classes)
    total = torch.zeros(classes, *shape, device=device)
    for start in range(0, len(data.y_train), BATCH):
        x = data.x_train[start : start + BATCH].to(device, torch.float32) / 255.0
        total.index_add_(0, data.y_train[start : start + BATCH].to(device), x)
    mean = total / counts.to(device, torch.float32).clamp_min(1).view(-1, 1, 1, 1)
    squares = torch.zeros_like(total)
    for start in range(0, len(data.y_train), BATCH):
        y = data.y_train[start : start + BATCH].to(device)
        x = data.x_train[start : start + BATCH].to(device, torch.float32) / 255.0
        squares.index_add_(0, y, (x - mean[y]) ** 2)
    variance = squares / counts.to(device, torch.float32).clamp_min(1).view(-1, 1, 1, 1)
    return mean, variance, counts


def corner_colours(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The 2^C corners of the colour cube (2^C × C, entries 0 or 1), first channel most
    significant, as the official code enumerates them."""
    index = torch.arange(2**channels, device=device)
    bits = torch.arange(channels - 1, -1, -1, device=device)
    return ((index[:, None] >> bits[None, :]) & 1).to(dtype)


def shortcut_score(
    mean: torch.Tensor, variance: torch.Tensor, colours: torch.Tensor
) -> torch.Tensor:
    """Mean / std of ``|colour − x|`` over one class's images and channels (colours × H × W).

    With a colour bit of 1 a channel's change is ``1 − x``, else ``x``: its mean is ``1 − m`` or
    ``m`` and its variance is the channel's variance either way.  Pooled over channels, the
    variance is the mean channel variance plus the spread of the channel means.
    """
    bits = colours[:, :, None, None]  # colours × C × 1 × 1
    channel_mean = torch.where(bits > 0, 1 - mean[None], mean[None])  # colours × C × H × W
    pooled_mean = channel_mean.mean(1)
    pooled_var = (variance[None] + (channel_mean - pooled_mean[:, None]) ** 2).mean(1)
    score = pooled_mean / pooled_var.sqrt()
    constant = pooled_var <= 0
    score = torch.where(constant & (pooled_mean > 0), torch.inf, score)
    return torch.where(constant & (pooled_mean <= 0), 0.0, score)


def shortcut_noise(
    x: torch.Tensor, y: torch.Tensor, choice: torch.Tensor, colours: torch.Tensor
) -> torch.Tensor:
    """Sample-wise noise: ``target − x`` at each image's class pixels, zero elsewhere."""
    delta = torch.zeros(x.shape, dtype=torch.float32)
    images = torch.arange(len(y))
    for k in range(choice.shape[1]):
        rows, cols, colour = choice[y, k].unbind(1)  # per image, from its class
        pixel = x[images, :, rows, cols].float() / 255.0  # N × C
        delta[images, :, rows, cols] = colours[colour] - pixel
    return delta
