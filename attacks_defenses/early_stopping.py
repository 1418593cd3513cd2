"""``earlystop``: the attacker keeps the epoch that looks best.

Two numbers per cell: the oracle peak (the best clean *test* accuracy over epochs, in every
record as ``best_acc``) and the realistic choice (``selected_acc``): the epoch with the best
accuracy on a clean validation split the attacker holds out of the training set.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from uebench.countermeasure import Countermeasure, EpochStats, TrainSet
from uebench.data import stratified_indices
from uebench.errors import UebenchError


class EarlyStopping(Countermeasure):
    """Report the epoch with the best accuracy on a held-out clean validation split.

    ``val_size`` clean training images (a fraction, or a count when ≥ 1) are held out.
    """

    def __init__(self, *, val_size: float = 0.1) -> None:
        if val_size <= 0:
            raise UebenchError(f"earlystop val_size must be positive, got {val_size:g}")
        self.val_size = val_size

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        total = len(train.y)
        count = round(self.val_size * total) if self.val_size < 1 else int(self.val_size)
        if not 0 < count < total:
            raise UebenchError(
                f"earlystop val_size={self.val_size:g} leaves no training or validation images "
                f"out of {total}"
            )
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        held = torch.zeros(total, dtype=torch.bool)
        held[stratified_indices(train.y, count, seed)] = True
        keep = ~held
        return replace(
            train,
            x=train.x[keep],
            y=train.y[keep],
            clean_x=train.clean_x[keep],
            poisoned=train.poisoned[keep],
            x_val=train.clean_x[held],  # the attacker's own clean images, never poisoned
            y_val=train.y[held],
            notes={**train.notes, "val_size": count},
        )

    def select(self, history: list[EpochStats]) -> int:
        scores = [float("-inf") if s.val_acc is None else s.val_acc for s in history]
        return max(range(len(history)), key=lambda i: (scores[i], -i))  # ties: the earliest
