"""Dataset-level filters a thief may run over the training images before training (ISS-style):
JPEG compression, grayscale conversion and bit-depth reduction (Liu et al., "Image Shortcut
Squeezing", 2023; APBench, Qin et al. 2024)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from uebench.countermeasure import Countermeasure, TrainSet
from uebench.data import ImageData
from uebench.errors import UebenchError


def _replace_images(train: TrainSet, x: torch.Tensor, **notes: object) -> TrainSet:
    return replace(train, x=x, notes={**train.notes, **notes})


def jpeg_roundtrip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode every uint8 image as a JPEG file at ``quality`` and decode it again.

    Pillow rather than torchvision.io: torchvision deprecated its codecs in 0.29, and a real
    codec (not kornia's differentiable approximation) is what a thief's filter would run.
    """
    mode = {1: "L", 3: "RGB"}.get(x.shape[1])
    if mode is None:
        raise UebenchError(f"jpeg needs 1- or 3-channel images, got {x.shape[1]} channels")
    pixels = x.permute(0, 2, 3, 1).numpy()
    out = np.empty_like(pixels)
    for index, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).save(
            buffer, format="JPEG", quality=quality
        )
        decoded = np.asarray(Image.open(buffer).convert(mode))
        out[index] = decoded.reshape(image.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class JPEGCompression(Countermeasure):
    """Re-encode the training images as JPEG (quality 10 in ISS)."""

    def __init__(self, *, quality: int = 10) -> None:
        if not 1 <= quality <= 100:
            raise UebenchError(f"jpeg quality must be in 1..100, got {quality}")
        self.quality = quality

    def check_data(self, data: ImageData) -> None:
        channels = data.image_shape[0]
        if channels not in (1, 3):
            raise UebenchError(f"jpeg needs 1- or 3-channel images, the data has {channels}")

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        x = jpeg_roundtrip(train.x, self.quality)
        return _replace_images(train, x, jpeg_quality=self.quality)


class Grayscale(Countermeasure):
    """Replace the training images by their luminance, repeated over the colour channels."""

    def check_data(self, data: ImageData) -> None:
        if data.image_shape[0] != 3:
            raise UebenchError(
                f"grayscale needs 3-channel (colour) images, the data has {data.image_shape[0]}"
            )

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        if train.x.shape[1] != 3:
            raise UebenchError("grayscale needs 3-channel images")
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        gray = (train.x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255)
        return _replace_images(train, gray.to(torch.uint8).expand_as(train.x).contiguous())


class BitDepthReduction(Countermeasure):
    """Keep the top ``bits`` bits of every channel value (2 in ISS and APBench).

    As torchvision's ``RandomPosterize(bits, p=1)``, which both use: the low bits are masked off
    (2 bits leave the levels 0, 64, 128, 192), not rounded to the nearest level.
    """

    def __init__(self, *, bits: int = 2) -> None:
        if not 1 <= bits <= 8:
            raise UebenchError(f"bdr bits must be in 1..8, got {bits}")
        self.bits = bits

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        mask = (0xFF << (8 - self.bits)) & 0xFF
        return _replace_images(train, train.x & mask, bdr_bits=self.bits)
