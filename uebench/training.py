"""Training and evaluation on device-resident uint8 data with batched tensor augmentation.

Paper defaults (Appendix B): SGD, momentum 0.9, lr 0.025, cosine annealing without restart,
weight decay 5e-4, batch 128, random crop (pad 4 on 32×32) and horizontal flip.

The fast recipe's ingredients (Jordan, *94% on CIFAR-10 in 3.29 seconds on a single GPU*,
arXiv 2404.00498) are further :class:`TrainConfig` fields, each off by default: Nesterov
momentum, a per-step triangular schedule, label smoothing, a larger learning rate for
BatchNorm biases, lookahead weight averaging, reflect-padded translation, alternating flip and
test-time augmentation.  A model may also fit itself to the training images it is given before
the first step (``fit_to_training_images``: airbench's whitening layer).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from uebench.countermeasure import Countermeasure, EpochStats
from uebench.data import to_float
from uebench.errors import UebenchError

#: The fields every cell id has always hashed; recipe fields join an id only when set.
_BASE_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "crop_padding",
    "flip",
    "amp",
    "eval_batch_size",
)
SCHEDULES = ("cosine", "triangle")
PAD_MODES = ("zeros", "reflect")
#: airbench's triangular schedule: the lr factor at the start, its peak's place, at the end.
TRIANGLE = (0.2, 0.23, 0.07)
#: airbench's lookahead: from this epoch on (1-based), every N steps, decay base**N × (t/T)**3.
LOOKAHEAD_START_EPOCH, LOOKAHEAD_EVERY, LOOKAHEAD_BASE, LOOKAHEAD_POW = 4, 5, 0.95, 3.0


@dataclass
class TrainConfig:
    """Hyperparameters of one training run.

    The fields after ``eval_batch_size`` are the fast recipe's ingredients; their defaults
    reproduce standard training, and :meth:`as_dict` leaves them out while they hold, so cell
    ids and poison keys of configurations from before them do not change.
    """

    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int | None = None  # None: image side // 8 (4 on 32×32, as the paper)
    flip: bool = True
    amp: bool = True  # bf16 autocast, only on CUDA
    eval_batch_size: int = 1024
    nesterov: bool = False
    schedule: str = "cosine"  # "cosine": per epoch; "triangle": airbench's, per step
    label_smoothing: float = 0.0
    bias_lr_scale: float = 1.0  # BatchNorm biases: lr × this, weight decay ÷ this (airbench: 64)
    lookahead: bool = False  # airbench's lookahead/EMA of the weights
    pad_mode: str = "zeros"  # the crop's padding; "reflect" with crop_padding=2: ±2 px translate
    alternate_flip: bool = False  # random flips in epoch 1, then every image flips each epoch
    # Test-time augmentation of the final test evaluation: 0 none, 1 mirror, 2 mirror and ±1 px
    tta: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UebenchError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.pad_mode not in PAD_MODES:
            raise UebenchError(
                f"pad_mode must be one of {', '.join(PAD_MODES)}, got {self.pad_mode!r}"
            )
        if not 0 <= self.label_smoothing < 1:
            raise UebenchError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not self.bias_lr_scale > 0:
            raise UebenchError(f"bias_lr_scale must be positive, got {self.bias_lr_scale!r}")
        if self.tta not in (0, 1, 2):
            raise UebenchError(f"tta must be 0, 1 or 2, got {self.tta!r}")

    def as_dict(self) -> dict:
        """The settings that define a result: the base fields, and recipe fields when set."""
        defaults = TrainConfig.__dataclass_fields__
        return {
            key: value
            for key, value in asdict(self).items()
            if key in _BASE_FIELDS or value != defaults[key].default
        }

    def recipe(self) -> dict:
        """Every recipe ingredient with its value, set or not: what a record names."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _BASE_FIELDS}


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


def standard_augmentation(
    image_side: int, padding: int | None, flip: bool, pad_mode: str = "zeros"
) -> nn.Module:
    """Random crop with ``pad_mode`` padding + horizontal flip, per sample, on the whole batch."""
    pad = image_side // 8 if padding is None else padding
    steps: list[nn.Module] = []
    if pad > 0:
        mode = "constant" if pad_mode == "zeros" else pad_mode
        steps.append(K.RandomCrop((image_side, image_side), padding=pad, padding_mode=mode))
    if flip:
        steps.append(K.RandomHorizontalFlip())
    return nn.Sequential(*steps)


def triangle(step: int, total_steps: int) -> float:
    """airbench's lr factor at ``step`` of ``total_steps``: linear from 0.2 up to 1 at 23% of
    training, then linear down to 0.07 at the end."""
    start, peak_at, end = TRIANGLE
    peak = max(int(peak_at * total_steps), 1)
    if step <= peak:
        return start + (1 - start) * step / peak
    return 1 + (end - 1) * (step - peak) / max(total_steps - peak, 1)


def _bias_groups(model: nn.Module, config: TrainConfig) -> list[dict] | None:
    """Parameter groups giving BatchNorm biases ``bias_lr_scale`` × the lr and ÷ the weight
    decay (so their decay per step stays that of the other weights), or None when unscaled."""
    if config.bias_lr_scale == 1.0:
        return None
    biases = {
        id(module.bias)
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None
    }
    scaled = [p for p in model.parameters() if p.requires_grad and id(p) in biases]
    other = [p for p in model.parameters() if p.requires_grad and id(p) not in biases]
    return [
        {
            "params": scaled,
            "lr": config.lr * config.bias_lr_scale,
            "weight_decay": config.weight_decay / config.bias_lr_scale,
        },
        {"params": other},
    ]


def make_optimizer(
    model: nn.Module, config: TrainConfig, total_steps: int | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """SGD with (Nesterov) momentum; a per-epoch cosine schedule over ``config.epochs``, or the
    per-step triangular one over ``total_steps`` (required then)."""
    optimizer = torch.optim.SGD(
        _bias_groups(model, config) or model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    if config.schedule == "triangle":
        if total_steps is None:
            raise UebenchError("the triangle schedule needs the number of training steps")
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: triangle(step, total_steps)
        )
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.epochs, 1)
        )
    return optimizer, scheduler


class Lookahead:
    """airbench's lookahead: an exponential average of the weights (float parameters and
    BatchNorm statistics) that the network is reset to at each update and at each epoch's end.

    The decay warms up as (t/T)³, so early training moves fast and the end averages strongly.
    """

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.model, self.total_steps = model, total_steps
        self.state: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def step(self, epoch: int, step: int) -> None:
        """After optimizer step ``step`` (1-based, counted over training) of epoch ``epoch``."""
        if epoch < LOOKAHEAD_START_EPOCH or step % LOOKAHEAD_EVERY:
            return
        tensors = [v for v in self.model.state_dict().values() if v.is_floating_point()]
        if self.state is None:
            self.state = [(v, v.detach().clone()) for v in tensors]
            return
        decay = LOOKAHEAD_BASE**LOOKAHEAD_EVERY * (step / self.total_steps) ** LOOKAHEAD_POW
        self.update(decay)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """Average toward the network by ``1 - decay``, then copy the average into it."""
        for live, average in self.state or ():
            average.lerp_(live.detach(), 1 - decay)
            live.copy_(average)


def tta_logits(model: nn.Module, images: torch.Tensor, level: int) -> torch.Tensor:
    """Logits with airbench's test-time augmentation: 0 none; 1 the mean over the image and its
    mirror; 2 half that, plus a quarter each for the image translated by one pixel up-left and
    down-right (reflect padding), each with its mirror."""
    if level == 0:
        return model(images).float()

    def mirror(batch: torch.Tensor) -> torch.Tensor:
        return 0.5 * model(batch).float() + 0.5 * model(batch.flip(-1)).float()

    logits = mirror(images)
    if level == 1:
        return logits
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., :height, :width], padded[..., 2 : 2 + height, 2 : 2 + width]]
    return 0.5 * logits + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))


@torch.no_grad()
def predict(
    model: nn.Module,
    x: torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    tta: int = 0,
) -> torch.Tensor:
    """Predicted labels for uint8 images ``x`` (returned on the CPU); ``tta`` as
    :func:`tta_logits`."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        batch = to_float(x[start : start + batch_size].to(device, non_blocking=True))
        with autocast(device, amp):
            out.append(tta_logits(model, batch, tta).argmax(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int = 1024,
    amp: bool = True,
    tta: int = 0,
) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 images ``x``."""
    if len(x) == 0:
        return float("nan")
    predicted = predict(model, x, device, batch_size, amp, tta)
    return 100.0 * float((predicted == y.cpu()).float().mean())


def fit_to_training_images(model: nn.Module, x: torch.Tensor) -> None:
    """Let a model with a data-dependent init (``fit_to_training_images(x)``, x uint8
    N×C×H×W on its device) see the images it is about to train on; others are left alone."""
    fit = getattr(model, "fit_to_training_images", None)
    if callable(fit):
        fit(x)


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
    A model with a data-dependent init is fitted to ``x`` (the images as given, poisoned and
    filtered) before the first step.
    """
    countermeasure = countermeasure or Countermeasure()
    generator = generator or torch.Generator().manual_seed(0)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x_dev, y_dev = x.to(device), y.to(device)
    fit_to_training_images(model, x_dev)
    augment = standard_augmentation(
        x.shape[-1], config.crop_padding, config.flip and not config.alternate_flip, config.pad_mode
    )
    steps_per_epoch = -(-len(x) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    per_step = config.schedule == "triangle"
    lookahead = Lookahead(model, total_steps) if config.lookahead else None
    flipped = None
    if config.flip and config.alternate_flip:
        # One random flip per image, drawn once; from then on every image flips each epoch, so
        # each sees both orientations in every two epochs (airbench's alternating flip).
        flipped = (torch.rand(len(x), generator=generator) < 0.5).to(device)
    smoothing = {"label_smoothing": config.label_smoothing} if config.label_smoothing else {}
    history: list[EpochStats] = []
    step = 0
    for epoch in range(1, config.epochs + 1):
        countermeasure.on_epoch_start(epoch, config.epochs)
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            images = to_float(x_dev[index])
            if flipped is not None:
                mask = flipped[index] ^ (epoch % 2 == 0)
                images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
            images = augment(images)
            labels = y_dev[index]
            images, targets = countermeasure.augment(images, labels)
            images = countermeasure.perturb(model, images, targets)
            if device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, config.amp):
                logits = model(images)
                loss = F.cross_entropy(logits.float(), targets, **smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if per_step:
                scheduler.step()
            if lookahead is not None:
                lookahead.step(epoch, step)
            # Accumulate on the device: a .item() per step would stall a GPU pipeline.
            loss_sum += loss.detach() * len(index)
            correct += (logits.argmax(1) == labels).sum()
        if not per_step:
            scheduler.step()
        if lookahead is not None:
            lookahead.update(1.0)  # the epoch ends on the averaged weights
        # Test-time augmentation costs several forward passes per image, so, as airbench does,
        # only the final evaluation (the reported accuracy) uses it; validation never does, so
        # a selection over epochs compares like with like.
        tta = config.tta if epoch == config.epochs else 0
        stats = EpochStats(
            epoch=epoch,
            train_loss=float(loss_sum) / len(x),
            train_acc=100.0 * float(correct) / len(x),
            test_acc=accuracy(model, *test, device, config.eval_batch_size, config.amp, tta)
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
