"""The countermeasure contract: optional hooks at the dataset, batch, step and selection level.

Every hook is a no-op by default, so a plugin overrides only what it changes:

* :meth:`Countermeasure.prepare` — dataset level, before training (partial poisoning, JPEG, ...).
* :meth:`Countermeasure.on_epoch_start` — told the epoch before each one (schedules, e.g. UEraser).
* :meth:`Countermeasure.augment` — batch level, float images on the device (cutout, mixup, ...).
* :meth:`Countermeasure.perturb` — training-step level, with the model (adversarial training).
* :meth:`Countermeasure.select` — which epoch is reported (early stopping).
* :meth:`Countermeasure.after_training` — model level, after training (recovery fine-tuning).

``cutmix+earlystop`` composes plugins left to right (:class:`Composed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.plugin_flags import PluginFlags
from uebench.registry import COUNTERMEASURES


@dataclass
class TrainSet:
    """What the attacker trains on, with the clean originals kept for bookkeeping."""

    x: torch.Tensor  # uint8 N×C×H×W, poisoned where ``poisoned`` is True
    y: torch.Tensor
    clean_x: torch.Tensor
    poisoned: torch.Tensor  # bool N
    x_val: torch.Tensor | None = None  # held-out clean validation images, if a plugin asks
    y_val: torch.Tensor | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # copied into the cell's record
    num_classes: int | None = None


@dataclass
class EpochStats:
    """One epoch of training: losses and accuracies in percent."""

    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    val_acc: float | None = None
    seconds: float = 0.0
    #: The predicted test labels behind ``test_acc``, kept for the last epoch only, so the
    #: trained model is scored without predicting again (test-time augmentation costs several
    #: passes); not part of a record (:meth:`record`).
    test_predictions: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def record(self) -> dict[str, Any]:
        """The epoch as a cell record keeps it: its numbers, without the predictions."""
        return {name: value for name, value in vars(self).items() if name != "test_predictions"}


@dataclass
class TrainingContext:
    """What :meth:`Countermeasure.after_training` may use besides the trained model."""

    device: torch.device
    config: Any  # the cell's TrainConfig (typed loosely: training.py imports this module)
    generator: torch.Generator
    test: tuple[torch.Tensor, torch.Tensor]  # clean uint8 test images and labels
    num_classes: int
    arch: str  # the victim's architecture spec, to build a fresh model of the same kind


class Countermeasure(PluginFlags):
    """Base class: standard training.  Override the hooks a countermeasure changes.

    Its flag ``late_options`` (:class:`~uebench.plugin_flags.PluginFlags`) keeps options added
    after results were recorded out of its identity at their default.
    """

    def check_data(self, data: ImageData) -> None:
        """Refuse, with a :class:`~uebench.errors.UebenchError`, a dataset this countermeasure
        cannot run on (a filter's channel count); a grid calls it for every countermeasure
        before its first cell.  The default accepts any data."""

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        """Transform the training set once, before training."""
        return train

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the trainer before epoch ``epoch`` (1-based) of ``epochs``; a no-op here.

        For countermeasures whose batch or step hooks change over training (UEraser's
        adversarial phase); the hooks themselves stay free of epoch bookkeeping.
        """

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transform a float batch in [0, 1]; ``y`` may become soft labels (N×K probabilities)."""
        return x, y

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Replace the inputs of a training step using the current model."""
        return x

    def select(self, history: list[EpochStats]) -> int:
        """Index into ``history`` of the epoch whose accuracy is reported."""
        return len(history) - 1

    def after_training(
        self, model: nn.Module, train: TrainSet, context: TrainingContext
    ) -> dict[str, Any]:
        """Change the trained model in place (e.g. fine-tune it); returns notes for the record.

        When a countermeasure overrides this hook, the cell reports the clean test accuracy of
        the model it leaves (``final_acc``) and keeps the accuracy before it (``trained_acc``).
        """
        return {}

    def overrides(self, hook: str) -> bool:
        return getattr(type(self), hook) is not getattr(Countermeasure, hook)

    def cost_factor(self) -> float:
        """How many times the compute of a standard training step one step under this
        countermeasure takes, for the cost estimate a grid prints before it starts.

        1.0 (the default) for countermeasures that change the data or the batch at little cost;
        adversarial training with K PGD steps costs about 1 + K (each step is a forward and
        backward pass); a countermeasure with forward-only extra passes counts each as about a
        third of one.
        """
        return 1.0


class Composed(Countermeasure):
    """Several countermeasures applied in the order written; one ``perturb``/``select`` each."""

    def __init__(self, parts: list[Countermeasure]) -> None:
        self.parts = parts
        for hook in ("perturb", "select", "after_training"):
            owners = [p for p in parts if p.overrides(hook)]
            if len(owners) > 1:
                names = ", ".join(type(p).__name__ for p in owners)
                raise UebenchError(f"cannot compose {names}: each replaces the {hook} hook")

    def check_data(self, data: ImageData) -> None:
        for part in self.parts:
            part.check_data(data)

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        for part in self.parts:
            train = part.prepare(train, generator)
        return train

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        for part in self.parts:  # every part: a schedule is not a hook one part owns
            part.on_epoch_start(epoch, epochs)

    def augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for part in self.parts:
            x, y = part.augment(x, y)
        return x, y

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            if part.overrides("perturb"):
                return part.perturb(model, x, y)
        return x

    def select(self, history: list[EpochStats]) -> int:
        for part in self.parts:
            if part.overrides("select"):
                return part.select(history)
        return len(history) - 1

    def after_training(
        self, model: nn.Module, train: TrainSet, context: TrainingContext
    ) -> dict[str, Any]:
        for part in self.parts:
            if part.overrides("after_training"):
                return part.after_training(model, train, context)
        return {}

    def overrides(self, hook: str) -> bool:
        return any(part.overrides(hook) for part in self.parts)

    def cost_factor(self) -> float:
        """The parts' factors multiplied: each part's extra work applies to every step."""
        return math.prod(part.cost_factor() for part in self.parts)


def build_countermeasure(text: str) -> Countermeasure:
    """``none``, ``cutmix`` or ``cutmix+earlystop:...`` into one countermeasure object."""
    parts = [COUNTERMEASURES.build(piece) for piece in text.split("+")]
    return parts[0] if len(parts) == 1 else Composed(parts)
