"""``median-filter``: median filtering of the training images, a complete example of a uebench
countermeasure.

A k × k median filter removes high-frequency patterns while keeping edges, a classic
pre-processing defense against additive perturbations.  With ``on=dataset`` (the default) the
training set is filtered once, before training (:meth:`Countermeasure.prepare`, uint8 images);
with ``on=batch`` every training batch is filtered after the standard crop and flip
(:meth:`Countermeasure.augment`, float images on the device).  Test images are never filtered.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import kornia
import torch

from uebench.countermeasure import Countermeasure, TrainSet
from uebench.errors import UebenchError

#: Images filtered at a time in ``prepare``: bounds the float copy's memory.
CHUNK = 4096


class MedianFilter(Countermeasure):
    """Median-filter the training images (once, or every batch) with a size × size window."""

    def __init__(self, *, size: int = 3, on: Literal["dataset", "batch"] = "dataset") -> None:
        if size < 3 or size % 2 == 0:
            raise UebenchError(f"median-filter: size must be odd and at least 3, got {size}")
        self.size = size
        self.on = on

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        notes = {**train.notes, "median_size": self.size, "median_on": self.on}
        if self.on != "dataset":
            return replace(train, notes=notes)
        chunks = []
        for start in range(0, len(train.x), CHUNK):
            batch = train.x[start : start + CHUNK].float() / 255.0
            filtered = kornia.filters.median_blur(batch, self.size)
            chunks.append((filtered * 255.0).round().clamp(0, 255).to(torch.uint8))
        x = torch.cat(chunks) if chunks else train.x
        return replace(train, x=x, notes=notes)

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.on == "batch":
            x = kornia.filters.median_blur(x, self.size)
        return x, y
