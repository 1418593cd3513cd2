"""The training crop and flip of a batch: kornia's against uebench's (a script, not a test).

    python benchmarks/batch_augment.py                      # batches of 256 and 1024, 1 thread
    python benchmarks/batch_augment.py --threads 2 --device cuda

Both pipelines take the same float batch (random CIFAR-sized images) through a random crop
after zero padding of 4 and a horizontal flip with probability 0.5: kornia's ``RandomCrop`` +
``RandomHorizontalFlip``, and :mod:`uebench.batch_augment`'s.  The two alternate ``--rounds``
times, so the machine's drift falls on both; it prints each round's milliseconds per batch and
the median ratio.  On a GPU each round ends in a synchronization, so the figure counts the
kernels and the host syncs a batch waits for.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import kornia.augmentation as K
import torch
from torch import nn

from uebench import UebenchError
from uebench.batch_augment import BatchCropFlip
from uebench.training import resolve_device

PADDING = 4


def milliseconds_per_batch(
    augment: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batches: int
) -> float:
    augment(images)  # warm
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    started = time.perf_counter()
    for _ in range(batches):
        augment(images)
    if images.device.type == "cuda":
        torch.cuda.synchronize(images.device)
    return (time.perf_counter() - started) / batches * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="256,1024")
    parser.add_argument("--batches", type=int, default=20, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a grid worker's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip().isdigit()]
    if len(sizes) != len(args.batch_sizes.split(",")) or min(sizes) < 1:
        parser.error(f"--batch-sizes must be positive integers, got {args.batch_sizes!r}")
    for flag in ("batches", "rounds", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    try:
        device = resolve_device(args.device)
    except UebenchError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipelines = {
        "kornia": nn.Sequential(K.RandomCrop((32, 32), padding=PADDING), K.RandomHorizontalFlip()),
        "uebench": BatchCropFlip(PADDING, flip=True),
    }
    print(f"device={device} threads={torch.get_num_threads()} crop after padding {PADDING} + flip")
    for size in sizes:
        images = torch.rand(size, 3, 32, 32, device=device)
        ratios = []
        for round_ in range(args.rounds):
            names = list(pipelines) if round_ % 2 == 0 else list(reversed(pipelines))
            times = {
                name: milliseconds_per_batch(pipelines[name], images, args.batches)
                for name in names
            }
            ratios.append(times["kornia"] / times["uebench"])
            print(
                f"batch {size}, round {round_ + 1}: kornia {times['kornia']:.2f} ms, "
                f"uebench {times['uebench']:.2f} ms, {ratios[-1]:.2f}×"
            )
        print(f"batch {size}: median {statistics.median(ratios):.2f}× faster than kornia")


if __name__ == "__main__":
    main()
