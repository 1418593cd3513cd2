"""Plugins that misbehave on purpose, for the Ray backend's tests (tests/test_ray_backend.py).

They are registered at run time in the test process; the Ray backend ships such plugins to its
workers with every task (this module is pickled by value, so workers need not import it).
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import torch

from uebench.countermeasure import Countermeasure
from uebench.data import ImageData
from uebench.method import CraftContext, Method
from uebench.poison import Poison


class CountedNoise(Method):
    """Uniform sample-wise noise that leaves one file in ``folder`` per crafting call."""

    def __init__(self, *, folder: str, seed: int = 0, eps: float = 8 / 255) -> None:
        self.folder = folder
        self.seed = seed
        self.eps = eps

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        (Path(self.folder) / f"seed{self.seed}-{uuid.uuid4().hex}").write_text(str(os.getpid()))
        generator = torch.Generator().manual_seed(self.seed)
        delta = torch.rand(len(data.y_train), *data.image_shape, generator=generator) * 2 - 1
        return Poison(delta * self.eps, torch.arange(len(data.y_train)), self.eps)


class DieOnce(Countermeasure):
    """Standard training, except that the first process to train kills itself mid-cell
    (SIGKILL, as the kernel's OOM killer would), leaving its pid in ``marker``."""

    def __init__(self, *, marker: str) -> None:
        self.marker = marker

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return x, y


class Explode(Countermeasure):
    """A countermeasure whose training step raises: a cell that fails on its own."""

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError("exploded on purpose")
