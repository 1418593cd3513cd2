"""What a cell measures besides accuracy: per-class accuracy, backdoor success (Appendix H),
and the two diagnostics that tell why a poison works or fails:

* :func:`shortcut_separability` — how well a linear classifier fit on the applied
  perturbations alone predicts the images' labels (Yu et al., KDD 2022), scored on held-out
  perturbations: effective availability poisons are near 100 %, sample-wise random noise near
  chance.  Yu et al. report training accuracy on all 50,000 CIFAR-10 images; on a subset with
  fewer images than twice the dimension any noise is separable in training, hence held out.
* :func:`shortcut_speed` — the epoch where the victim's training accuracy first passes 90 %,
  against the clean baseline's (Zhu et al., AAAI 2024; Sandoval-Segura et al. 2022): a poison
  learned faster than the clean data is being taken as a shortcut.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uebench.data import ImageData, stratified_indices
from uebench.poison import Poison
from uebench.training import predict

#: Images a separability fit uses at most (a seeded stratified subset): the linear fit costs
#: images × pixels × classes per iteration.
SEPARABILITY_MAX_IMAGES = 2000
#: Training accuracy (percent) whose first crossing :func:`shortcut_speed` reports.
SPEED_THRESHOLD = 90.0
#: When neither the poisoned nor the clean victim passes the threshold, a mean training accuracy
#: this many points above the clean one's still reads as the shortcut being taken.
AHEAD_POINTS = 10.0


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Accuracy in percent of each true class (rows of the confusion matrix); NaN if absent."""
    totals = confusion.sum(1).double()
    out = 100.0 * confusion.diag().double() / totals.clamp(min=1)
    return torch.where(totals > 0, out, torch.full_like(out, float("nan")))


def noised_classes(poison: Poison, num_classes: int) -> list[int] | None:
    """For a class-wise poison (row k = class k's noise), the classes whose images got noise."""
    if poison.form != "class" or len(poison.delta) != num_classes:
        return None
    return [int(row) for row in poison.rows.unique() if row >= 0]


@torch.no_grad()
def backdoor_success_rate(
    model: nn.Module,
    poison: Poison,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    num_classes: int,
    device: torch.device,
    generator: torch.Generator,
    batch_size: int = 1024,
) -> float | None:
    """Appendix H: the share (%) of clean test images predicted as a random other class once
    that class's noise is added to them; None when the poison is not class-wise.

    Each test image gets a target class drawn uniformly among the *noised* classes other than
    its own, so single-class poisons are measured only on their one trigger.
    """
    classes = noised_classes(poison, num_classes)
    if not classes:
        return None
    choices = torch.tensor(classes, dtype=torch.long).view(1, -1).expand(len(y_test), -1)
    allowed = (choices != y_test.view(-1, 1)).float()
    usable = allowed.sum(1) > 0
    if not usable.any():
        return None
    picks = torch.multinomial(allowed[usable], 1, generator=generator).flatten()
    targets = choices[usable].gather(1, picks.view(-1, 1)).flatten()
    x = x_test[usable]
    triggered = poison.add(x, poison.delta[targets])
    predicted = predict(model, triggered, device, batch_size)
    return 100.0 * float((predicted == targets).float().mean())


def shortcut_separability(
    perturbations: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int = 0,
    max_images: int = SEPARABILITY_MAX_IMAGES,
    iterations: int = 50,
) -> float | None:
    """Held-out accuracy (percent) of a linear classifier fit on perturbations alone.

    ``perturbations`` (N × C × H × W, the change each published image got) are split by a
    seeded stratified half: multinomial logistic regression (L2 penalty 1e-3, full-batch
    L-BFGS from zero, ``iterations`` steps) is fit on one half and scored on the other.
    Features are divided by their overall RMS so that the penalty means the same for every
    budget.  None when fewer than 2 classes or 4 images are there to split.
    """
    labels = labels.long().cpu()
    classes = labels.unique()
    if len(classes) < 2 or len(labels) < 4:
        return None
    if len(labels) > max_images:
        keep = stratified_indices(labels, max_images, seed)
        perturbations, labels = perturbations[keep], labels[keep]
    features = perturbations.detach().float().cpu().flatten(1)
    features = features / features.square().mean().sqrt().clamp(min=1e-12)
    targets = torch.searchsorted(classes, labels)
    generator = torch.Generator().manual_seed(seed)
    fit = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(len(classes)):
        members = (targets == k).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fit[members[: (len(members) + 1) // 2]] = True
    if fit.all():  # every class has one image: nothing is held out
        return None
    weight = torch.zeros(features.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=iterations, line_search_fn="strong_wolfe"
    )
    x_fit, y_fit = features[fit], targets[fit]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x_fit @ weight + bias, y_fit) + 1e-3 * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (features[~fit] @ weight + bias).argmax(1)
    return 100.0 * float((predicted == targets[~fit]).float().mean())


_SEPARABILITY_MEMO: dict[tuple[str, str], float | None] = {}


def poison_separability(poison: Poison, data: ImageData) -> float | None:
    """:func:`shortcut_separability` of the perturbations ``poison`` publishes on the images it
    noises (``poison.apply(x) − x``, 8-bit rounding included); None when it noises none.

    Memoized per poison and training set, so the cells of a grid sharing a poison fit once.
    """
    x_train, y_train = data.x_train, data.y_train
    noised = poison.rows >= 0
    if not bool(noised.any()) or len(poison.rows) != len(x_train):
        return None
    key = (poison.content_hash(), data.fingerprint())
    if key not in _SEPARABILITY_MEMO:
        published = poison.apply(x_train).float() - x_train.float()
        changes = published[noised] / 255.0
        value = (
            None
            if not bool(changes.abs().sum())
            else shortcut_separability(changes, y_train[noised])
        )
        _SEPARABILITY_MEMO[key] = value
    return _SEPARABILITY_MEMO[key]


def first_epoch_above(
    history: list[dict[str, Any]], threshold: float = SPEED_THRESHOLD
) -> int | None:
    """The first epoch whose training accuracy passes ``threshold`` percent (None if none)."""
    for stats in history:
        if stats.get("train_acc") is not None and stats["train_acc"] >= threshold:
            return int(stats["epoch"])
    return None


def shortcut_speed(
    record: dict[str, Any], clean: dict[str, Any] | None, threshold: float = SPEED_THRESHOLD
) -> str:
    """One sentence: does the poisoned victim's training accuracy outrun the clean baseline's?

    ``record`` and ``clean`` are cell records (``history`` of per-epoch ``train_acc``) of the
    same dataset, countermeasure, architecture and seed; ``clean`` is None when the grid has
    no clean row to compare with.
    """
    mine = first_epoch_above(record["history"], threshold)
    reached = f"epoch {mine}" if mine is not None else "never"
    if clean is None:
        passes = (
            f"passes {threshold:.0f}% at {reached}"
            if mine is not None
            else (f"never passes {threshold:.0f}%")
        )
        return f"training accuracy {passes}; no clean row to compare (add clean to --methods)"
    base = first_epoch_above(clean["history"], threshold)
    base_text = f"epoch {base}" if base is not None else "never"
    where = f"(poisoned: {reached}; clean: {base_text})"
    if mine is not None and (base is None or mine < base):
        return (
            f"training accuracy passes {threshold:.0f}% sooner than the clean baseline's "
            f"{where}: the victim is taking the shortcut"
        )
    if mine is None and base is None:
        # Neither crosses: compare the whole curves (mean training accuracy over the epochs).
        own, other = mean_train_acc(record), mean_train_acc(clean)
        means = (
            f"(neither passes {threshold:.0f}%; mean training accuracy {own:.0f}% vs clean "
            f"{other:.0f}%)"
        )
        if own >= other + AHEAD_POINTS:
            return (
                f"training accuracy runs ahead of the clean baseline's {means}: the victim is "
                "taking the shortcut"
            )
        return (
            f"training accuracy does not outrun the clean baseline's {means}: the poison is "
            "not being learned at this scale"
        )
    if mine is None:
        return (
            f"training accuracy never passes {threshold:.0f}% {where}: the poison is not "
            "being learned at this scale"
        )
    return (
        f"training accuracy passes {threshold:.0f}% no sooner than the clean baseline's "
        f"{where}: the poison is not learned as a shortcut at this scale"
    )


def mean_train_acc(record: dict[str, Any]) -> float:
    """Mean training accuracy (percent) over a record's epochs (NaN when none is recorded)."""
    values = [h["train_acc"] for h in record["history"] if h.get("train_acc") is not None]
    return sum(values) / len(values) if values else float("nan")


def clean_baselines(records: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The clean-method record of each setting (dataset, countermeasure, arch, seed, protocol)."""
    return {
        record_setting(r): r for r in records if str(r.get("method_spec", r["method"])) == "clean"
    }


def record_setting(record: dict[str, Any]) -> tuple[Any, ...]:
    """The setting a record measured in (what its clean baseline shares with it)."""
    return (
        record["dataset"],
        record.get("defense_spec", record["defense"]),
        record["arch"],
        record["seed"],
        record.get("protocol"),
        record.get("train_size"),
    )
