"""``partial:rate=R``: only a seeded fraction R of the poisoned images keep their noise (Table 2).

The record gives the indices that stayed poisoned, and, unless ``clean_baseline=false``, the
clean test accuracy of a second model trained on the clean part alone (Table 2's D_c column):
when both numbers match, the poisoned part contributed nothing to learning.  ``part=poisoned``
or ``part=clean`` trains on one part only, for Figure 2(a–b)'s three learning curves.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
from torch import nn

from uebench.countermeasure import Countermeasure, TrainingContext, TrainSet
from uebench.errors import UebenchError
from uebench.method import check_fraction
from uebench.registry import ARCHS
from uebench.training import train as fit


class PartialPoisoning(Countermeasure):
    """Poison only a random fraction ``rate`` of the images; the rest stay clean."""

    def __init__(
        self,
        *,
        rate: float,
        part: Literal["both", "poisoned", "clean"] = "both",
        clean_baseline: bool = True,
    ) -> None:
        self.rate = check_fraction("partial rate", rate)
        self.part = part
        self.clean_baseline = clean_baseline and part == "both"

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        candidates = torch.nonzero(train.poisoned).flatten()
        keep = candidates[torch.randperm(len(candidates), generator=generator)]
        keep = keep[: round(self.rate * len(candidates))].sort().values
        poisoned = torch.zeros_like(train.poisoned)
        poisoned[keep] = True
        x = torch.where(poisoned.view(-1, 1, 1, 1), train.x, train.clean_x)
        notes = {
            **train.notes,
            "rate": self.rate,
            "poisoned_count": len(keep),
            "poisoned_indices": keep.tolist(),
        }
        if self.part == "both":
            return replace(train, x=x, poisoned=poisoned, notes=notes)
        chosen = poisoned if self.part == "poisoned" else ~poisoned
        if not chosen.any():
            raise UebenchError(f"partial:rate={self.rate:g} leaves no {self.part} images")
        return replace(
            train,
            x=x[chosen],
            y=train.y[chosen],
            clean_x=train.clean_x[chosen],
            poisoned=poisoned[chosen],
            notes={**notes, "part": self.part, "trained_on": int(chosen.sum())},
        )

    def after_training(
        self, model: nn.Module, train: TrainSet, context: TrainingContext
    ) -> dict[str, Any]:
        """Train a fresh model of the same architecture on the clean part alone (D_c)."""
        if not self.clean_baseline:
            return {}
        clean = ~train.poisoned
        if not clean.any():
            return {"clean_part_acc": None, "clean_part_size": 0}
        baseline = ARCHS.build(context.arch, context.num_classes, tuple(train.x.shape[1:]))
        history = fit(
            baseline,
            train.x[clean],
            train.y[clean],
            context.config,
            context.device,
            test=context.test,
            generator=context.generator,
        )
        return {
            "clean_part_acc": history[-1].test_acc,
            "clean_part_size": int(clean.sum()),
            "clean_part_history": [stats.test_acc for stats in history],
        }
