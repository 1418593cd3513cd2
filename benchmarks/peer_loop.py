"""The field's training loop beside uebench's trainer, on the same model and images.

A script, not a test.

    python benchmarks/peer_loop.py                                  # ResNet-18 at width 16
    python benchmarks/peer_loop.py --arch airbench:width=16 --batch-size 256   # mini's victim

In one process it trains the same architecture from the same initial weights on the same
CIFAR-10 images (``uebench.load``'s stratified subset), for the same epochs at the same batch
size with the same optimizer (SGD, momentum 0.9, ``--lr``, ``--weight-decay``, cosine per
epoch: ``uebench.training.make_optimizer`` on both sides; no Nesterov, label smoothing or
lookahead), twice:

1. the loop the field's code uses (APBench, the official EM/REM/TAP code): a torchvision-style
   ``Dataset`` of PIL images (uint8 HWC → ``PIL.Image`` per ``__getitem__``), per-sample
   ``RandomCrop(side, padding=4)`` + ``RandomHorizontalFlip()`` + ``ToTensor()``, a
   ``DataLoader(shuffle=True, num_workers=W, pin_memory=False)`` that keeps the last, partial
   batch (``drop_last=False``, the default), and ``x.to(device)`` per batch.  W is the fastest
   of 0, 1, 2, 4, 8 and 16 workers (those up to the CPU count) on a short probe
   (``--probe-batches`` steps each, worker start-up included; ``--workers`` forces one);
2. ``uebench.training.train`` with the same settings (crop padding 4, flip; it keeps the last
   partial batch too).

Neither side evaluates while training; each model's test accuracy is measured once afterwards,
outside the timed span, to show that both trained.  The timed span is wall-clock from the
CPU model to the trained model, device synchronized at both ends: moving the model and data to
the device, a data-fitted layer's fitting (airbench's whitening; both sides fit it), every
epoch, and compiling where the trainer compiles.  Optimizer steps and training images are
counted by hooks on both sides and must agree.  Each side runs ``--rounds`` times (2), the
two taking turns to go first, and their median speeds are compared.  Before either side it
times the model's bare forward+backward+step on one resident float batch
(``benchmarks/fast_cell.py``'s figure), which also warms the process's kernels for both;
``--compile`` adds that step through ``torch.compile``.  bf16 autocast (``--amp``: on CUDA, and
on a CPU with ``UEBENCH_CPU_BF16=1``, ``uebench.execution``) applies to both sides and the bare
step, or to none of them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fast_cell import bare_throughput, sync
from PIL import Image
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from uebench import ARCHS, UebenchError, load
from uebench.data import ImageData
from uebench.execution import Execution, execution_for
from uebench.training import (
    TrainConfig,
    accuracy,
    fit_to_training_images,
    make_optimizer,
    resolve_device,
    train,
)

#: The crop's padding on both sides, as the field's CIFAR code pads 32×32 images.
CROP_PADDING = 4
#: Worker counts the probe tries when ``--workers`` is not given (those up to the CPU count).
WORKER_CHOICES = tuple(w for w in (0, 1, 2, 4, 8, 16) if w <= max(os.cpu_count() or 1, 2))
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


class PilImages(Dataset):
    """Images as the field's code holds them: uint8 HWC arrays, one PIL image per access."""

    def __init__(self, data: ImageData, transform: nn.Module) -> None:
        images = data.x_train.permute(0, 2, 3, 1).numpy()
        # One channel: PIL wants H×W ("L" mode), as torchvision's MNIST gives it.
        self.images = np.ascontiguousarray(images[..., 0] if images.shape[-1] == 1 else images)
        self.labels = data.y_train.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def field_transform(side: int) -> transforms.Compose:
    """The field's per-sample training augmentation."""
    return transforms.Compose(
        [
            transforms.RandomCrop(side, padding=CROP_PADDING),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )


@contextlib.contextmanager
def counting(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count optimizer steps (any optimizer) and images through ``model``'s forward while open."""
    counts = {"steps": 0, "images": 0}

    def on_step(*_: object) -> None:
        counts["steps"] += 1

    def on_forward(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        counts["images"] += len(inputs[0])

    handles = [
        register_optimizer_step_post_hook(on_step),
        model.register_forward_pre_hook(on_forward),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def peer_train(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    workers: int,
    seed: int,
    max_batches: int | None = None,
) -> float:
    """Train ``model`` with the field's loop; the wall-clock seconds it took.

    ``max_batches``: stop after that many steps of the first epoch (the worker probe).
    """
    torch.manual_seed(seed)  # the per-sample crops and flips of workers=0
    loader = DataLoader(
        PilImages(data, field_transform(data.image_shape[-1])),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=False,
        drop_last=False,
        generator=torch.Generator().manual_seed(seed),  # the order and the workers' seeds
    )
    sync(device)
    started = time.perf_counter()
    model.to(device)
    fit_to_training_images(model, data.x_train.to(device))
    optimizer, scheduler = make_optimizer(model, config)
    model.train()
    # The precision uebench's trainer runs in (bf16 with --amp: CUDA; CPU with UEBENCH_CPU_BF16=1).
    precision = execution_for(device)
    for _ in range(1 if max_batches else config.epochs):
        for x, y in itertools.islice(loader, max_batches):
            x, y = x.to(device), y.to(device)
            with precision.autocast(device, config.amp):
                loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    sync(device)
    return time.perf_counter() - started


def uebench_train(
    model: nn.Module,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    seed: int,
    execution: Execution,
) -> float:
    """Train ``model`` with ``uebench.training.train`` as a cell runs it (``execution``: the
    device's memory format and compile choice), no evaluation; the seconds it took (compiling
    included)."""
    torch.manual_seed(seed)  # the batched crops and flips (uebench.batch_augment)
    sync(device)
    started = time.perf_counter()
    train(
        model,
        data.x_train,
        data.y_train,
        config,
        device,
        generator=torch.Generator().manual_seed(seed),
        execution=execution,
    )
    sync(device)
    return time.perf_counter() - started


def best_workers(
    initial: nn.Module,
    data: ImageData,
    config: TrainConfig,
    device: torch.device,
    seed: int,
    batches: int,
) -> int:
    """The worker count of the fastest probe (``batches`` steps each, on copies of the model)."""
    speeds = {}
    for workers in WORKER_CHOICES:
        seconds = peer_train(copy.deepcopy(initial), data, config, device, workers, seed, batches)
        speeds[workers] = min(batches * config.batch_size, len(data.y_train)) / seconds
        print(f"  probe: {workers} worker(s) {speeds[workers]:.0f} img/s ({batches} steps)")
    return max(speeds, key=speeds.__getitem__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, every bad value a one-line error before any work."""
    parser = argparse.ArgumentParser(prog="peer_loop.py", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18:width=16")
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000, help="the after-training check")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.025)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument(
        "--amp",
        action="store_true",
        help="bf16 autocast on both sides (CUDA; a CPU with UEBENCH_CPU_BF16=1)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="force the DataLoader's W")
    parser.add_argument("--probe-batches", type=int, default=8, help="steps per worker probe")
    parser.add_argument("--bare-steps", type=int, default=20)
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each side, the first side alternating"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile uebench's trainer (default: the device's choice, uebench.execution) and "
        "time the compiled bare step",
    )
    args = parser.parse_args(argv)
    positive = ("train_size", "test_size", "epochs", "batch_size", "probe_batches", "bare_steps")
    for name in (*positive, "rounds"):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be at least 0, got {args.workers}")
    if not args.lr > 0 or args.weight_decay < 0:
        parser.error(
            f"--lr must be positive and --weight-decay not negative, got {args.lr}, "
            f"{args.weight_decay}"
        )
    try:
        ARCHS.resolve(args.arch)
        args.device = resolve_device(args.device)
    except UebenchError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> None:
    """Time both loops and print their images/s, their ratio and the bare step's."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device: torch.device = args.device
    try:
        data = load("cifar10", args.data_root, args.train_size, args.test_size)
    except UebenchError as error:
        sys.exit(f"peer_loop.py: error: {error}")
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=0.9,
        weight_decay=args.weight_decay,
        crop_padding=CROP_PADDING,
        flip=True,
        amp=args.amp,
    )
    count = len(data.y_train)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"load={os.getloadavg()[0]:.2f} arch={args.arch} train={count} epochs={args.epochs} "
        f"batch={args.batch_size} lr={args.lr:g} wd={args.weight_decay:g} amp={args.amp}"
    )
    execution = execution_for(device, args.compile)
    bare = bare_throughput(
        args.arch, config, data, device, args.bare_steps, replace(execution, compile=False)
    )
    print(f"bare forward+backward+step on a resident batch: {bare:.0f} img/s ({execution})")
    compiled = None
    if args.compile:
        compiled = bare_throughput(
            args.arch,
            config,
            data,
            device,
            args.bare_steps,
            replace(execution_for(device), compile=True),
        )
        print(f"bare step through torch.compile: {compiled:.0f} img/s (compiling not timed)")

    torch.manual_seed(args.seed)
    initial = ARCHS.build(args.arch, data.num_classes, data.image_shape)
    workers = args.workers
    if workers is None:
        workers = best_workers(initial, data, config, device, args.seed, args.probe_batches)
    expected = {"steps": -(-count // args.batch_size) * args.epochs, "images": count * args.epochs}
    print(
        f"each side: {expected['steps']} optimizer steps, {expected['images']} images (the "
        f"last batch, of {count % args.batch_size or args.batch_size}, kept in each epoch)"
    )
    names = {
        "peer": f"peer loop (PIL Dataset, per-sample transforms, DataLoader, {workers} worker(s))",
        "uebench": f"uebench trainer ({execution})",
    }
    speeds: dict[str, list[float]] = {side: [] for side in names}
    # The machine's speed drifts by a fifth from minute to minute, so the trainer is set
    # beside a bare step timed right after it, round by round.
    ratios: list[float] = []
    for round_ in range(args.rounds):
        # The side that runs second in a process inherits the first's memory and caches, so
        # the two take turns going first.
        order = list(names) if round_ % 2 == 0 else list(reversed(names))
        for side in order:
            name = names[side]
            model = copy.deepcopy(initial)
            with counting(model) as counts:
                if side == "peer":
                    seconds = peer_train(model, data, config, device, workers, args.seed)
                else:
                    seconds = uebench_train(model, data, config, device, args.seed, execution)
            if counts != expected:
                sys.exit(f"peer_loop.py: error: the {name} made {counts}, not {expected}")
            speeds[side].append(expected["images"] / seconds)
            acc = accuracy(
                model, data.x_test, data.y_test, device, config.eval_batch_size, args.amp
            )
            print(
                f"{name}: {speeds[side][-1]:.0f} img/s ({seconds:.2f} s); "
                f"test accuracy after {acc:.2f}%"
            )
            if side == "uebench":
                eager = replace(execution, compile=False)
                beside = bare_throughput(args.arch, config, data, device, args.bare_steps, eager)
                ratios.append(speeds[side][-1] / beside)
                print(f"  bare step right after: {beside:.0f} img/s, trainer / it {ratios[-1]:.2f}")
    speed = {side: statistics.median(values) for side, values in speeds.items()}
    if args.rounds > 1:
        print(
            f"median over {args.rounds} rounds: peer {speed['peer']:.0f} img/s, "
            f"uebench {speed['uebench']:.0f} img/s"
        )
    ours = speed["uebench"]
    print(f"uebench / peer: {ours / speed['peer']:.2f}×  [goal: ≥ 2×]")
    print(
        f"uebench trainer / bare eager step: {statistics.median(ratios):.2f} (the median of "
        f"each round's, the bare step timed right after the trainer)"
    )
    if compiled is not None:
        print(f"uebench trainer / bare compiled step: {ours / compiled:.2f}  [goal: ≥ 0.90]")


if __name__ == "__main__":
    main()
