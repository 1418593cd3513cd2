"""Measure the core's costs (a script, not a test).

1. Trainer throughput: images/s of ``uebench.training.train`` (uint8 → float, batched
   crop+flip, cross-entropy, SGD) as a ratio of the bare model's forward+backward+step on the
   same batches already in float (the physical limit).  Goal ≥ 0.9.
2. Crafting cost: time to craft ``emin`` class-wise and sample-wise noise as a ratio of one
   clean training run of the same source model on the same data (paper: ≈10% and ≈60%).

    python benchmarks/core_costs.py --dataset cifar10 --data-root ../shared/data/cifar10 \
        --train-size 2000 --arch resnet18:width=16 --epochs 60
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from uebench.data import to_float
from uebench.datasets import load_dataset
from uebench.method import CraftContext
from uebench.precision import autocast
from uebench.registry import ARCHS, METHODS
from uebench.training import TrainConfig, make_optimizer, resolve_device, train


def bare_throughput(arch: str, data, config: TrainConfig, device, epochs: int) -> float:
    """Images/s of forward+backward+step alone on pre-made float batches."""
    model = ARCHS.build(arch, data.num_classes, data.image_shape).to(device)
    optimizer, _ = make_optimizer(model, config)
    x = to_float(data.x_train.to(device))
    y = data.y_train.to(device)
    batches = list(zip(x.split(config.batch_size), y.split(config.batch_size), strict=True))
    model.train()
    started = time.perf_counter()
    for _ in range(epochs):
        for images, labels in batches:
            with autocast(device, config.amp):
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(x) / (time.perf_counter() - started)


def trainer_throughput(arch: str, data, config: TrainConfig, device, epochs: int) -> float:
    """Images/s of the full trainer (test evaluation excluded, as in the bare loop)."""
    model = ARCHS.build(arch, data.num_classes, data.image_shape)
    started = time.perf_counter()
    train(
        model,
        data.x_train,
        data.y_train,
        TrainConfig(**{**config.as_dict(), "epochs": epochs}),
        device,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs * len(data.y_train) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--arch", default="resnet18:width=16")
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the clean reference run")
    parser.add_argument("--throughput-epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip-crafting", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root, args.train_size, 1000)
    config = TrainConfig(epochs=args.epochs)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"data={args.dataset} n={len(data.y_train)} shape={data.image_shape} arch={args.arch}"
    )

    # Warm-up once so both loops start from the same allocator/kernel state.
    bare_throughput(args.arch, data, config, device, 1)
    bare = bare_throughput(args.arch, data, config, device, args.throughput_epochs)
    full = trainer_throughput(args.arch, data, config, device, args.throughput_epochs)
    print(
        f"trainer throughput: bare fwd+bwd {bare:.0f} img/s, trainer {full:.0f} img/s, "
        f"ratio {full / bare:.3f} (goal >= 0.9)"
    )
    if args.skip_crafting:
        return

    started = time.perf_counter()
    model = ARCHS.build(args.arch, data.num_classes, data.image_shape)
    train(model, data.x_train, data.y_train, config, device)
    clean_seconds = time.perf_counter() - started
    print(f"clean training, {args.epochs} epochs: {clean_seconds:.1f} s")
    ctx = CraftContext(device, config, progress=False)
    for spec, paper in (("emin:form=class", 0.10), ("emin:form=sample", 0.60)):
        started = time.perf_counter()
        poison = METHODS.build(f"{spec}:source=[{args.arch}]").craft(data, ctx)
        seconds = time.perf_counter() - started
        print(
            f"{spec}: {seconds:.1f} s = {seconds / clean_seconds:.2f} × clean training "
            f"(paper ≈ {paper:.2f}); rounds {poison.meta['rounds']}, "
            f"final error {poison.meta['final_error']:.4f}"
        )


if __name__ == "__main__":
    main()
