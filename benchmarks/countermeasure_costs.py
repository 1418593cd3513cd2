"""Time per training run under each countermeasure, relative to standard training.

Every countermeasure trains the same architecture on the same (clean) training data for the same
epochs; the poison does not change the cost.  The whole cell is timed: ``prepare`` (JPEG,
partial), the training loop with ``augment``/``perturb``, and ``after_training`` (partial's D_c
model).  Standard training is timed before and after the others, and their mean is the
denominator, so slow drift of a shared machine shows up as a difference between the two.

    python benchmarks/countermeasure_costs.py --dataset cifar10 \
        --data-root ../shared/data/cifar10 --train-size 1000 --arch resnet18:width=16 --epochs 2
"""

from __future__ import annotations

import argparse
import time

import torch

from uebench.countermeasure import TrainingContext, TrainSet, build_countermeasure
from uebench.datasets import load_dataset
from uebench.registry import ARCHS
from uebench.training import TrainConfig, resolve_device, train

DEFAULT_DEFENSES = (
    "cutout,mixup,cutmix,autoaugment,uniform-noise,jpeg,grayscale,earlystop,"
    "partial:rate=0.5:clean_baseline=false,partial:rate=0.5,advtrain"
)


def time_cell(spec: str, data, arch: str, config: TrainConfig, device: torch.device) -> float:
    """Seconds for one cell's countermeasure work plus training, evaluation excluded."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    measure = build_countermeasure(spec)
    model = ARCHS.build(arch, data.num_classes, data.image_shape)
    started = time.perf_counter()
    trainset = measure.prepare(
        TrainSet(
            data.x_train,
            data.y_train,
            data.x_train,
            torch.ones(len(data.y_train), dtype=torch.bool),
            num_classes=data.num_classes,
        ),
        generator,
    )
    train(
        model, trainset.x, trainset.y, config, device, countermeasure=measure, generator=generator
    )
    if measure.overrides("after_training"):
        context = TrainingContext(
            device, config, generator, (data.x_test, data.y_test), data.num_classes, arch
        )
        measure.after_training(model, trainset, context)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cluttered-digits")
    parser.add_argument("--data-root")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--arch", default="resnet18:width=16")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--defenses", default=DEFAULT_DEFENSES)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    from uebench.spec import split_list

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root, args.train_size, 200)
    config = TrainConfig(epochs=args.epochs)
    print(
        f"{data.name}: {len(data.y_train)} training images {data.image_shape}, {args.arch}, "
        f"{args.epochs} epochs, {device}, {torch.get_num_threads()} threads"
    )
    time_cell("none", data, args.arch, config, device)  # warm-up: allocator, kernels, imports
    before = time_cell("none", data, args.arch, config, device)
    seconds = {
        spec: time_cell(spec, data, args.arch, config, device) for spec in split_list(args.defenses)
    }
    after = time_cell("none", data, args.arch, config, device)
    standard = (before + after) / 2
    print(f"{'none':40s} {standard:8.2f} s   1.00×   (before {before:.2f} s, after {after:.2f} s)")
    for spec, value in seconds.items():
        print(f"{spec:40s} {value:8.2f} s  {value / standard:5.2f}×")


if __name__ == "__main__":
    main()
