"""Which execution pays on this device: channels-last memory and ``torch.compile``, for the
victims the protocols train (a script, not a test; ``uebench.execution`` holds the choice).

    python benchmarks/execution_choices.py                       # mini's CIFAR-10 victim
    python benchmarks/execution_choices.py --arch resnet18:width=16 --batch-size 128

For each of the four executions (plain, channels-last, compiled, both) it trains a fresh model
with ``uebench.training.train`` for ``--epochs`` on ``--train-size`` CIFAR-10 images at the
protocol's recipe and batch, and times it end to end (compiling included), then one evaluation
of the test images.  Compilation is measured cold: the script points PyTorch's compile cache
at a new empty folder (``--warm-cache`` keeps the machine's), so the figure is what a fresh
machine pays once per process and shape.  It prints images/s, the compile cost (the first
epoch's extra time over a later one) and the estimated wall time of a whole cell of
``--cell-epochs`` × ``--cell-images`` training images under each (compile cost plus training
at the measured speed): the execution with the shortest estimate is the one to default to.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

if "--warm-cache" not in sys.argv:  # before torch is imported: a cold compile cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="uebench-inductor-")

import torch

from uebench import load
from uebench.execution import Execution
from uebench.grid.protocols import resolve_protocol
from uebench.registry import ARCHS
from uebench.training import TrainConfig, accuracy, resolve_device, train

EXECUTIONS = {
    "plain": Execution(channels_last=False, compile=False),
    "channels-last": Execution(channels_last=True, compile=False),
    "compiled": Execution(channels_last=False, compile=True),
    "channels-last+compiled": Execution(channels_last=True, compile=True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--protocol", default="mini", help="the recipe and default arch")
    parser.add_argument("--arch", default=None, help="default: the protocol's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--train-size", type=int, default=4096)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cell-epochs", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--cell-images", type=int, default=None, help="default: the protocol's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--only", default=",".join(EXECUTIONS), help="executions to time")
    parser.add_argument("--warm-cache", action="store_true", help="keep the compile cache")
    args = parser.parse_args()
    device = resolve_device(args.device)
    protocol = resolve_protocol(args.protocol, "cifar10")
    batch = args.batch_size or protocol.batch_size
    arch = args.arch or protocol.archs[0]
    lr = protocol.lr * batch / protocol.batch_size
    config = TrainConfig(epochs=args.epochs, batch_size=batch, lr=lr, **protocol.train)
    cell_epochs = args.cell_epochs or protocol.epochs
    cell_images = args.cell_images or protocol.train_size or 50_000
    data = load("cifar10", args.data_root, args.train_size, args.test_size)
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
        f"load={os.getloadavg()[0]:.2f} arch={arch} batch={batch} train={args.train_size} "
        f"epochs={args.epochs} compile cache={'warm' if args.warm_cache else 'cold'}"
    )
    estimates = {}
    for name in args.only.split(","):
        execution = EXECUTIONS[name]
        torch.manual_seed(0)
        model = ARCHS.build(arch, data.num_classes, data.image_shape)
        sync(device)
        started = time.perf_counter()
        history = train(model, data.x_train, data.y_train, config, device, execution=execution)
        sync(device)
        total = time.perf_counter() - started
        epochs = [stats.seconds for stats in history]
        steady = min(epochs[1:]) if len(epochs) > 1 else epochs[0]
        speed = len(data.y_train) / steady
        compile_cost = max(total - steady * len(epochs), 0.0)
        started = time.perf_counter()
        acc = accuracy(model, data.x_test, data.y_test, device, 1024, config.amp, 0, execution)
        evaluation = time.perf_counter() - started
        estimates[name] = compile_cost + cell_epochs * cell_images / speed
        print(
            f"{name:24s} {speed:6.0f} img/s  first-epoch extra {compile_cost:5.1f} s  "
            f"eval {evaluation:4.1f} s  acc {acc:5.1f}%  -> a {cell_epochs}×{cell_images} cell "
            f"trains in ~{estimates[name]:.0f} s"
        )
    best = min(estimates, key=estimates.get)
    print(f"fastest for a whole cell on {device.type}: {best}")


if __name__ == "__main__":
    main()
