"""Training and evaluation on device-resident uint8 data with batched tensor augmentation.

Paper defaults (Appendix B): SGD, momentum 0.9, lr 0.025, cosine annealing without restart,
weight decay 5e-4, batch 128, random crop (pad 4 on 32×32) and horizontal flip.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from uebench.countermeasure import Countermeasure, EpochStats
from uebench.data import to_float
from uebench.errors import UebenchError


@dataclass
class TrainConfig:
    """Hyperparameters of one training run."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int | None = None  # None: image side // 8 (4 on 32×32, as the paper)
    flip: bool = True
    amp: bool = True  # bf16 autocast, only on CUDA
    eval_batch_size: int = 1024

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; an unavailable device is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UebenchError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UebenchError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return device


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on the CPU, where it is slower."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def standard_augmentation(image_side: int, padding: int | None, flip: bool) -> nn.Module:
    """Random crop with zero padding + horizontal flip, per sample, on the whole batch."""
    pad = image_side // 8 if padding is None else padding
    steps: list[nn.Module] = []
    if pad > 0:
        steps.append(K.RandomCrop((image_side, image_side), padding=pad))
    if flip:
        steps.append(K.RandomHorizontalFlip())
    return nn.Sequential(*steps)


def make_optimizer(
    model: nn.Module, config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with momentum and a per-epoch cosine schedule over ``config.epochs``."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    return optimizer, scheduler


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
) -> torch.Tensor:
    """Predicted labels for uint8 images ``x`` (returned on the CPU)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = to_float(x[start : start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp):
            out.append(model(batch).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 images ``x``."""
    if len(x) == 0:
        return float("nan")
    return 100.0 * float((predict(model, x, device, batch_size, amp) == y.cpu()).float().mean())


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    device: torch.device,
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    countermeasure: Countermeasure | None = None,
    generator: torch.Generator | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` on uint8 images ``x`` with labels ``y``; clean test accuracy every epoch.

    The whole training set is moved to ``device`` once, as uint8; each batch is indexed, turned
    into float, augmented and stepped without a DataLoader (the data is already in memory).
    """
    countermeasure = countermeasure or Countermeasure()
    generator = generator or torch.Generator().manual_seed(0)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x_dev, y_dev = x.to(device), y.to(device)
    augment = standard_augmentation(x.shape[-1], config.crop_padding, config.flip)
    optimizer, scheduler = make_optimizer(model, config)
    history: list[EpochStats] = []
    for epoch in range(1, config.epochs + 1):
        countermeasure.on_epoch_start(epoch, config.epochs)
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            images = augment(to_float(x_dev[index]))
            labels = y_dev[index]
            images, targets = countermeasure.augment(images, labels)
            images = countermeasure.perturb(model, images, targets)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, config.amp):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            # Accumulate on the device: a .item() per step would stall a GPU pipeline.
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == labels).sum()
        scheduler.step()
        stats = EpochStats(
            epoch=epoch,
            train_loss=float(loss_sum) / len(x),
            train_acc=100.0 * float(correct) / len(x),
            test_acc=accuracy(model, *test, device, config.eval_batch_size, config.amp)
            if test
            else float("nan"),
            val_acc=accuracy(model, *val, device, config.eval_batch_size, config.amp)
            if val
            else None,
            seconds=time.perf_counter() - started,
        )
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history


def confusion_matrix(
    predicted: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """K×K counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
