"""Batch-level augmentations a data thief may add to standard crop+flip (Appendix D, Table 3).

All run on the float batch on the training device, per sample, inside the training loop.
Mixing augmentations return soft labels (N×K probabilities), which the trainer's cross-entropy
takes as they are.
"""

from __future__ import annotations

import kornia.augmentation as K
import kornia.filters
import torch
import torch.nn.functional as F
from torch import nn

from uebench.countermeasure import Countermeasure, TrainSet
from uebench.errors import UebenchError
from uebench.method import check_eps


class _LabelMixing(Countermeasure):
    """Shared by mixup and cutmix: both turn hard labels into soft ones over all classes."""

    name = "mixing"

    def __init__(self) -> None:
        self.num_classes: int | None = None

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        self.num_classes = train.num_classes
        return train

    def check_labels(self, y: torch.Tensor) -> None:
        if y.dim() == 2:
            raise UebenchError(f"{self.name} needs hard labels; use one label-mixing augmentation")
        if self.num_classes is None:
            raise UebenchError(f"{self.name} needs the number of classes (set by prepare)")

    def mixed_labels(
        self, first: torch.Tensor, second: torch.Tensor, first_share: torch.Tensor
    ) -> torch.Tensor:
        k = self.num_classes
        share = first_share.view(-1, 1)
        return share * F.one_hot(first.long(), k) + (1 - share) * F.one_hot(second.long(), k)


def cutout_mask(
    shape: torch.Size, length: int, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N×1×H×W float mask, 0 inside one ``length``×``length`` square per image, 1 elsewhere.

    The square's centre is uniform over the image and the square is clipped at the border, as in
    DeVries & Taylor's Cutout.  Written by hand: kornia's RandomErasing draws an area fraction
    and an aspect ratio, not a fixed-size square that may leave the image.
    """
    n, _, h, w = shape
    cy = torch.randint(0, h, (n, 1, 1), device=device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=device, generator=generator)
    rows = torch.arange(h, device=device).view(1, h, 1)
    cols = torch.arange(w, device=device).view(1, 1, w)
    half = length // 2
    inside = (
        (rows >= cy - half)
        & (rows < cy - half + length)
        & (cols >= cx - half)
        & (cols < cx - half + length)
    )
    return (~inside).unsqueeze(1).float()


class Cutout(Countermeasure):
    """Cutout: zero one square per image (length 16 on 32×32, the paper's setting)."""

    def __init__(self, *, length: int | None = None) -> None:
        if length is not None and length < 1:
            raise UebenchError(f"cutout length must be at least 1 pixel, got {length}")
        self.length = length

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.length if self.length is not None else x.shape[-1] // 2
        return x * cutout_mask(x.shape, length, x.device), y


class Mixup(_LabelMixing):
    """Mixup: convex combinations of random pairs of images and of their labels (λ ~ U(0, 1))."""

    name = "mixup"

    def __init__(self) -> None:
        super().__init__()
        self._mix = K.RandomMixUpV2(data_keys=["input", "class"])

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_labels(y)
        mixed, pairs = self._mix(x, y)
        # kornia's convention: out = (1 − λ)·x_a + λ·x_b, so x_a's share is 1 − λ
        return mixed, self.mixed_labels(pairs[:, 0], pairs[:, 1], 1 - pairs[:, 2])


class CutMix(_LabelMixing):
    """CutMix: paste a random box of another image; labels mixed by the pasted area."""

    name = "cutmix"

    def __init__(self) -> None:
        super().__init__()
        self._mix = K.RandomCutMixV2(data_keys=["input", "class"], use_correct_lambda=True)

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check_labels(y)
        mixed, pairs = self._mix(x, y)
        pairs = pairs[-1]  # one (y_a, y_b, λ) row per image for each mixing round; we mix once
        # with use_correct_lambda, λ is the share of x_a that stays (the CutMix paper's)
        return mixed, self.mixed_labels(pairs[:, 0], pairs[:, 1], pairs[:, 2])


class FixedAutoAugment(Countermeasure):
    """The paper's fixed FA policy: contrast, brightness, sharpness, rotation, then Cutout.

    Each of the first four is applied to a sample with probability ``p``.

    Ranges are AutoAugment's largest magnitudes: contrast and sharpness factors in [0.1, 1.9],
    rotation within ±30°; brightness, which kornia shifts additively rather than scaling, by at
    most ±0.3.  kornia's ``auto.AutoAugment`` draws one sub-policy per *batch* and has no cutout
    operation, so the fixed policy is a per-sample kornia pipeline instead.
    """

    def __init__(self, *, p: float = 0.5) -> None:
        if not 0 <= p <= 1:
            raise UebenchError(f"autoaugment needs 0 <= p <= 1, got {p:g}")
        self.p = p
        self.pipeline = nn.Sequential(
            K.RandomContrast((0.1, 1.9), p=p),
            K.RandomBrightness((0.7, 1.3), p=p),
            K.RandomSharpness((0.1, 1.9), p=p),
            K.RandomRotation(30.0, p=p),
        )
        self.cutout = Cutout()

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cutout.augment(self.pipeline(x).clamp(0, 1), y)


class UniformNoise(Countermeasure):
    """Fresh uniform noise in [−ε, ε] on every training batch (a cheap noise-drowning defence)."""

    def __init__(self, *, eps: float = 8 / 255) -> None:
        self.eps = check_eps(eps)

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise = torch.empty_like(x).uniform_(-self.eps, self.eps)
        return (x + noise).clamp(0, 1), y


class GaussianBlur(Countermeasure):
    """Gaussian blur of every training batch: kernel 3, σ 0.1 (ISS's and APBench's ``gaussian``).

    Both run torchvision's ``GaussianBlur(3, sigma=0.1)`` before crop+flip; here kornia blurs the
    float batch after them, with the same reflect padding.  At σ = 0.1 the off-centre taps of a
    3-tap Gaussian weigh about 2e-22, so the defaults leave every image unchanged in float32,
    exactly as the field's setting does: its ``gaussian`` column is standard training.  Pass a
    larger ``sigma`` (e.g. 1) for a blur that removes high frequencies.  A kernel wider than the
    image is narrowed to the largest odd size that fits.
    """

    def __init__(self, *, kernel_size: int = 3, sigma: float = 0.1) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UebenchError(f"blur kernel_size must be a positive odd number, got {kernel_size}")
        if sigma <= 0:
            raise UebenchError(f"blur sigma must be positive, got {sigma:g}")
        self.kernel_size = kernel_size
        self.sigma = sigma

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fits = min(x.shape[-2:])
        size = min(self.kernel_size, fits if fits % 2 else fits - 1)
        if size == 1:
            return x, y
        blurred = kornia.filters.gaussian_blur2d(x, size, (self.sigma, self.sigma))
        return blurred, y
