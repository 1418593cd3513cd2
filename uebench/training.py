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

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from uebench.batch_augment import BatchCropFlip
from uebench.countermeasure import Countermeasure, EpochStats
from uebench.data import to_float
from uebench.errors import UebenchError
from uebench.execution import Execution

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
#: airbench94's lookahead: every N steps, decay base**N × (t/T)**3 (from the first step).
LOOKAHEAD_EVERY, LOOKAHEAD_BASE, LOOKAHEAD_POW = 5, 0.95, 3.0


@dataclass
class TrainConfig:
    """Hyperparameters of one training run.

    The fields after ``eval_batch_size`` are the fast recipe's ingredients; their defaults
    reproduce standard training, and :meth:`as_dict` leaves them out while they hold, so cell
    ids and poison keys of configurations from before them do not change.  ``epochs`` may be
    fractional (airbench94 trains 9.9): training stops after ``ceil(steps per epoch × epochs)``
    steps, so its last epoch is a partial one.
    """

    epochs: int | float = 60
    batch_size: int = 128
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int | None = None  # None: image side // 8 (4 on 32×32, as the paper)
    flip: bool = True
    amp: bool = True  # bf16 autocast on CUDA, and on a CPU with UEBENCH_CPU_BF16=1 (execution)
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
    drop_last: bool = False  # skip each epoch's last partial batch (airbench94 does)
    # A fitted whitening layer's bias trains this many epochs, then freezes (airbench94: 3);
    # None: it trains throughout (models without one ignore the setting).
    whiten_bias_epochs: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.epochs, float) and self.epochs.is_integer():
            self.epochs = int(self.epochs)  # 10.0 and 10 are one setting (and one cell id)
        if not self.epochs >= 0:  # 0: no training (a source model used as initialized)
            raise UebenchError(f"epochs must be >= 0, got {self.epochs!r}")
        if self.schedule not in SCHEDULES:
            raise UebenchError(
                f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )
        if self.crop_padding is not None and not self.crop_padding >= 0:
            raise UebenchError(f"crop_padding must be >= 0 or unset, got {self.crop_padding!r}")
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
        if self.whiten_bias_epochs is not None and self.whiten_bias_epochs < 0:
            raise UebenchError(
                f"whiten_bias_epochs must be >= 0 or unset, got {self.whiten_bias_epochs!r}"
            )

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

    @property
    def whole_epochs(self) -> int:
        """The number of epochs begun (the last one partial when ``epochs`` is fractional)."""
        return math.ceil(self.epochs)

    def steps_per_epoch(self, images: int) -> int:
        """Optimizer steps in one pass over ``images`` (at least one: a set smaller than a
        batch trains on itself even with ``drop_last``)."""
        if self.drop_last:
            return max(images // self.batch_size, 1)
        return -(-images // self.batch_size)

    def total_steps(self, images: int) -> int:
        """Optimizer steps over the whole run."""
        return math.ceil(self.steps_per_epoch(images) * self.epochs)


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


def standard_augmentation(
    image_side: int, padding: int | None, flip: bool, pad_mode: str = "zeros"
) -> nn.Module:
    """Random crop with ``pad_mode`` padding + horizontal flip, per sample, on the whole batch."""
    pad = image_side // 8 if padding is None else padding
    if pad == 0 and not flip:
        return nn.Identity()
    return BatchCropFlip(pad, flip, pad_mode)


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
            optimizer, T_max=max(config.whole_epochs, 1)
        )
    return optimizer, scheduler


class Lookahead:
    """airbench94's lookahead: an exponential average of the weights (float parameters and
    BatchNorm statistics) kept from the first step; every :data:`LOOKAHEAD_EVERY` steps the
    average moves toward the network and the network is reset to it, and after the last step the
    network takes the average (:meth:`finish`).

    The decay warms up as (t/T)³, so early training moves fast and the end averages strongly.
    Made before the model's data-dependent init, as airbench94 makes its state before fitting
    the whitening (the first update's decay is about 1e-6, so the order barely matters).
    """

    def __init__(self, model: nn.Module, total_steps: int) -> None:
        self.total_steps = max(total_steps, 1)
        self.state = [
            (live, live.detach().clone())
            for live in model.state_dict().values()
            if live.is_floating_point()
        ]

    def step(self, step: int) -> None:
        """After optimizer step ``step`` (1-based, counted over training)."""
        if step % LOOKAHEAD_EVERY == 0:
            decay = LOOKAHEAD_BASE**LOOKAHEAD_EVERY * (step / self.total_steps) ** LOOKAHEAD_POW
            self.update(decay)

    def finish(self) -> None:
        """After the last step: the network becomes the average."""
        self.update(1.0)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """Average toward the network by ``1 - decay``, then copy the average into it."""
        for live, average in self.state:
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
    execution: Execution | None = None,
) -> torch.Tensor:
    """Predicted labels for uint8 images ``x`` (returned on the CPU); ``tta`` as
    :func:`tta_logits`; ``execution`` as the model was trained (plain by default).

    A compiled model sees every batch at one size (the last one padded, its padding's
    predictions dropped): in eval mode images do not affect each other, and a second size
    would cost a second compilation.
    """
    execution = execution or Execution()
    forward = execution.forward(model)
    was_training = model.training
    model.eval()
    out = []
    batch_size = execution.eval_batch(batch_size)
    size = min(batch_size, len(x))
    for start in range(0, len(x), batch_size):
        batch = to_float(x[start : start + batch_size].to(device, non_blocking=True))
        count = len(batch)
        if execution.compile and count < size:
            batch = torch.cat((batch, batch.new_zeros(size - count, *batch.shape[1:])))
        with execution.autocast(device, amp):
            logits = tta_logits(forward, execution.inputs(batch), tta)
        out.append(logits[:count].argmax(1).cpu())
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
    execution: Execution | None = None,
) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 images ``x`` (NaN for none)."""
    return percent_correct(predict(model, x, device, batch_size, amp, tta, execution), y)


def percent_correct(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of ``predicted`` labels equal to ``labels``, in percent (NaN for none)."""
    if len(labels) == 0:
        return float("nan")
    return 100.0 * float((predicted == labels.cpu()).float().mean())


def fit_to_training_images(model: nn.Module, x: torch.Tensor) -> None:
    """Let a model with a data-dependent init (``fit_to_training_images(x)``, x uint8
    N×C×H×W on its device) see the images it is about to train on; others are left alone."""
    fit = getattr(model, "fit_to_training_images", None)
    if callable(fit):
        fit(x)


def freeze_whitening_bias(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    epoch: int,
    execution: Execution,
) -> None:
    """Before epoch ``epoch`` (1-based): once ``config.whiten_bias_epochs`` epochs have passed,
    take a fitted whitening layer's bias (``model.whitening_bias``) out of the optimizer.

    In eager execution its gradient stops too, as airbench94 stops it: the backward pass then
    skips the input gradient of the first convolution, the largest one (an eager training step
    of ``mini``'s victim 1.36× faster, ``benchmarks/whitening_freeze.py``).  A compiled model
    keeps computing that gradient (a few numbers it never uses) rather than recompile for a
    changed ``requires_grad``.  :func:`train` gives the bias its gradient back at the end.
    """
    bias = getattr(model, "whitening_bias", None)
    if config.whiten_bias_epochs is None or bias is None or epoch <= config.whiten_bias_epochs:
        return
    for group in optimizer.param_groups:
        group["params"] = [param for param in group["params"] if param is not bias]
    if not execution.compile:
        bias.requires_grad_(False)


def thaw_whitening_bias(model: nn.Module) -> None:
    """Give a whitening bias that :func:`freeze_whitening_bias` stopped its gradient back, so
    later training of the model (a countermeasure's fine-tuning) trains it as before."""
    bias = getattr(model, "whitening_bias", None)
    if bias is not None:
        bias.requires_grad_(True)


class TrainingBatches:
    """The float training batches of each epoch: a fresh shuffle (its last partial batch
    dropped under ``drop_last``), airbench's alternating flip, then the crop and flip of
    :func:`standard_augmentation`, all on the device."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        config: TrainConfig,
        generator: torch.Generator,
    ) -> None:
        self.x, self.y, self.config, self.generator = x, y, config, generator
        self.augment = standard_augmentation(
            x.shape[-1],
            config.crop_padding,
            config.flip and not config.alternate_flip,
            config.pad_mode,
        )
        self.flipped = None
        if config.flip and config.alternate_flip:
            # One random flip per image, drawn once; from then on every image flips each epoch,
            # so each sees both orientations in every two epochs (airbench's alternating flip).
            self.flipped = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)

    def epoch(
        self, epoch: int, steps: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(indices, augmented float images, labels)`` of the epoch's first ``steps`` batches."""
        order = torch.randperm(len(self.x), generator=self.generator).to(self.x.device)
        size = self.config.batch_size
        for start in range(0, size * steps, size):
            index = order[start : start + size]
            images = to_float(self.x[index])
            if self.flipped is not None:
                mask = self.flipped[index] ^ (epoch % 2 == 0)
                images = torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
            yield index, self.augment(images), self.y[index]


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
    execution: Execution | None = None,
) -> list[EpochStats]:
    """Train ``model`` on uint8 images ``x`` with labels ``y``; clean test accuracy every epoch.

    The whole training set is moved to ``device`` once, as uint8; each batch is indexed, turned
    into float, augmented and stepped without a DataLoader (the data is already in memory).
    A model with a data-dependent init is fitted to ``x`` (the images as given) before the
    first step.  ``execution`` says how the model runs (:mod:`uebench.execution`), never what.
    """
    countermeasure = countermeasure or Countermeasure()
    generator = generator or torch.Generator().manual_seed(0)
    execution = execution or Execution()
    execution.place(model, device)
    total_steps = config.total_steps(len(x))
    lookahead = Lookahead(model, total_steps) if config.lookahead else None
    x_dev, y_dev = x.to(device), y.to(device)
    fit_to_training_images(model, x_dev)
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    batches = TrainingBatches(x_dev, y_dev, config, generator)
    step = TrainingStep(execution.forward(model), optimizer, config, device, execution)
    history: list[EpochStats] = []
    done = 0
    for epoch in range(1, config.whole_epochs + 1):
        countermeasure.on_epoch_start(epoch, config.whole_epochs)
        freeze_whitening_bias(model, optimizer, config, epoch, execution)
        started = time.perf_counter()
        model.train()
        steps = min(config.steps_per_epoch(len(x)), total_steps - done)
        for _, images, labels in batches.epoch(epoch, steps):
            images, targets = countermeasure.augment(images, labels)
            images = countermeasure.perturb(step.forward, images, targets)
            step(images, targets, labels)
            done += 1
            if config.schedule == "triangle":
                scheduler.step()
            if lookahead is not None:
                lookahead.step(done)
        if config.schedule != "triangle":
            scheduler.step()
        if lookahead is not None and done == total_steps:
            lookahead.finish()
        history.append(
            epoch_stats(model, step, epoch, started, config, device, test, val, execution)
        )
        if on_epoch:
            on_epoch(history[-1])
    thaw_whitening_bias(model)
    return history


class TrainingStep:
    """One optimizer step on a batch, with the epoch's loss and accuracy summed on the device
    (a ``.item()`` per step would stall a GPU pipeline)."""

    def __init__(
        self,
        forward: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device,
        execution: Execution,
    ) -> None:
        self.forward, self.optimizer, self.config = forward, optimizer, config
        self.device, self.execution = device, execution
        self.smoothing = {"label_smoothing": config.label_smoothing}
        self.reset()

    def reset(self) -> None:
        """Start a new epoch's sums."""
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device)
        self.images = 0

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> None:
        """Step on ``images`` toward ``targets`` (labels or soft labels); ``labels`` score the
        training accuracy."""
        with self.execution.autocast(self.device, self.config.amp):
            logits = self.forward(self.execution.inputs(images))
            loss = F.cross_entropy(logits.float(), targets, **self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.images += len(labels)


def epoch_stats(
    model: nn.Module,
    step: TrainingStep,
    epoch: int,
    started: float,
    config: TrainConfig,
    device: torch.device,
    test: tuple[torch.Tensor, torch.Tensor] | None,
    val: tuple[torch.Tensor, torch.Tensor] | None,
    execution: Execution,
) -> EpochStats:
    """The epoch's training sums (then reset) and its clean test and validation accuracy.

    Test-time augmentation costs several forward passes per image, so, as airbench does, only
    the final evaluation (the reported accuracy) uses it; validation never does, so a selection
    over epochs compares like with like.
    """
    final = epoch == config.whole_epochs
    tta = config.tta if final else 0
    predicted = None
    if test:
        predicted = predict(
            model, test[0], device, config.eval_batch_size, config.amp, tta, execution
        )
    trained = max(step.images, 1)
    stats = EpochStats(
        epoch=epoch,
        train_loss=float(step.loss_sum) / trained,
        train_acc=100.0 * float(step.correct) / trained,
        test_acc=percent_correct(predicted, test[1]) if test else float("nan"),
        val_acc=accuracy(model, *val, device, config.eval_batch_size, config.amp, 0, execution)
        if val
        else None,
        seconds=time.perf_counter() - started,
        test_predictions=predicted if final else None,
    )
    step.reset()
    return stats


def confusion_matrix(
    predicted: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """K×K counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
