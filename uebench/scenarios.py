"""Scenario options the harness applies to any method's poison: which classes are unlearnable
(a spec's ``classes=``), wherever a poison is made (grid cells, ``uebench.craft``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.poison import Poison
from uebench.registry import METHODS


def resolve_classes(tokens: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    """Class numbers from numbers or names (``2``, ``bird``); unknown ones list the valid names."""
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    resolved: list[int] = []
    for token in tokens:
        text = str(token).strip()
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < len(class_names):
                last = len(class_names) - 1
                raise UebenchError(f"class {index} is out of range; the dataset has 0..{last}")
        elif text.lower() in lookup:
            index = lookup[text.lower()]
        else:
            raise UebenchError(f"unknown class {text!r}; valid: {', '.join(class_names)}")
        if index not in resolved:
            resolved.append(index)
    if not resolved:
        raise UebenchError("classes= names no class")
    return sorted(resolved)


def only_classes(poison: Poison, labels: torch.Tensor, classes: Sequence[int]) -> Poison:
    """The poison with every image outside ``classes`` left clean (its row set to -1)."""
    keep = torch.isin(labels.cpu(), torch.tensor(list(classes), dtype=labels.dtype))
    rows = torch.where(keep, poison.rows, torch.full_like(poison.rows, -1))
    meta = {**poison.meta, "classes": list(classes)}
    return Poison(poison.delta, rows, poison.threat, meta, surrogate=poison.surrogate)


def spec_poison(method: str, crafted: Poison, data: ImageData) -> Poison:
    """``crafted`` restricted to the ``classes=`` the method spec names (all of it otherwise):
    the harness's part of a spec, shared by the runner and ``uebench.craft``."""
    classes = METHODS.resolve(method).options.get("classes")
    if classes:
        return only_classes(crafted, data.y_train, resolve_classes(classes, data.classes))
    return crafted
