"""Time the fast protocol end to end: one clean cell, one crafted ``emin`` poison, one
``advtrain`` cell (a script, not a test).

    python benchmarks/fast_cell.py --data-root ../shared/data/cifar10            # a GPU
    python benchmarks/fast_cell.py --train-size 5000 --test-size 1000 \\
        --arch airbench:width=16 --epochs 8 --batch-size 256 --skip emin,advtrain  # a CPU

Every cell runs through ``uebench``'s own path (``run_cell``: loading, crafting, training,
evaluation) under ``--protocol fast`` (``--protocol mini`` times the CPU protocol's CIFAR-10
cell); flags override the protocol as ``uebench run``'s do.  The learning rate follows the
batch size linearly from the protocol's (1.5 at 1024 for ``fast``).  It
prints each stage's wall time, the trainer's images/s against the bare forward+backward+step
throughput of the same model on the same device and batches, and the GPU goals
(clean cell ≤ 10 s at ≥ 93 %, sample-wise ``emin`` crafting ≤ 2 minutes).

On the project's offline CIFAR-10 copy (``cifar10.npz``), whose test rows 1017-9999 are
decoded from JPEG files (its README), it also scores the clean cell's victim on the 1017
bit-exact test images and on the JPEG-decoded ones apart.  ``--skip probes`` leaves out the
bare-step and evaluation timings when only the accuracy is wanted.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from uebench.data import ImageData, to_float
from uebench.execution import Execution, execution_for
from uebench.grid.cell import craft_poison, load_cell_data, run_cell
from uebench.grid.config import GridConfig
from uebench.grid.protocols import resolve_protocol
from uebench.registry import ARCHS
from uebench.training import (
    TrainConfig,
    accuracy,
    fit_to_training_images,
    make_optimizer,
    resolve_device,
)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize()


#: Rounds of the bare step; its figure is their median.
BARE_ROUNDS = 3


def bare_throughput(
    arch: str,
    config: TrainConfig,
    data: ImageData,
    device: torch.device,
    steps: int,
    execution: Execution | None = None,
) -> float:
    """Images/s of forward+backward+step alone on one pre-made float batch of
    ``config.batch_size`` (the model's limit), the model run as ``execution`` says (the
    device's default; compilation happens in the warm-up, not timed): the median of
    :data:`BARE_ROUNDS` rounds of ``steps`` steps, as one round on a shared machine moves by
    as much as the gaps it is compared with."""
    execution = execution or execution_for(device)
    model = execution.place(ARCHS.build(arch, data.num_classes, data.image_shape), device)
    fit_to_training_images(model, data.x_train.to(device))
    forward = execution.forward(model)
    optimizer, _ = make_optimizer(model, config, total_steps=steps + 1)
    images = execution.inputs(to_float(data.x_train[: config.batch_size].to(device)))
    labels = data.y_train[: config.batch_size].to(device)
    model.train()

    def step() -> None:
        with execution.autocast(device, config.amp):
            loss = F.cross_entropy(forward(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3 if execution.compile else 1):  # warm-up: compiled, memory allocated
        step()
    speeds = []
    for _ in range(BARE_ROUNDS):
        sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        speeds.append(steps * len(labels) / (time.perf_counter() - started))
    return statistics.median(speeds)


def timing_probes(
    cell, data: ImageData, device: torch.device, bare_steps: int, compile: bool
) -> Callable[[dict], str]:
    """Print the bare step's throughput (and, with ``compile``, the compiled one's) and one
    test evaluation's time, plain and with TTA; returns what a cell record's training
    throughput reads as, against the bare step."""
    bare = bare_throughput(cell.arch, cell.train, data, device, bare_steps)
    print(f"bare forward+backward+step: {bare:.0f} img/s")
    if compile:
        started = time.perf_counter()
        execution = replace(execution_for(device), compile=True)
        compiled = bare_throughput(cell.arch, cell.train, data, device, bare_steps, execution)
        print(
            f"bare step through torch.compile: {compiled:.0f} img/s = {compiled / bare:.2f} × "
            f"eager (compiling and timing took {time.perf_counter() - started:.0f} s)"
        )
    # One evaluation pass as the trainer runs it each epoch (plain; the final one with TTA),
    # to separate training throughput from evaluation.
    execution = execution_for(device)  # the cell's: channels-last, evaluated in chunks on a CPU
    probe = execution.place(ARCHS.build(cell.arch, data.num_classes, data.image_shape), device)
    config = cell.train
    eval_s = {}
    for tta in (0, 0, config.tta):  # the first pass warms up
        started = time.perf_counter()
        accuracy(
            probe,
            data.x_test,
            data.y_test,
            device,
            config.eval_batch_size,
            config.amp,
            tta,
            execution,
        )
        sync(device)
        eval_s[tta] = time.perf_counter() - started
    print(f"one test evaluation: {eval_s[0]:.2f} s plain, {eval_s[config.tta]:.2f} s with TTA")
    images = config.epochs * len(data.y_train)

    def throughput(record: dict) -> str:
        train_s = sum(epoch["seconds"] for epoch in record["history"])
        only = train_s - eval_s[0] * (len(record["history"]) - 1) - eval_s[config.tta]
        return (
            f"training+per-epoch evaluation {train_s:.1f} s; training alone ≈ "
            f"{images / only:.0f} img/s = {images / only / bare:.2f} × bare"
        )

    return throughput


def exact_test_rows(data_root: Path, dataset: str, test_count: int) -> torch.Tensor | None:
    """The ``x_test_exact`` mask of an offline ``DATASET.npz`` copy whose test set is partly
    rebuilt from lossy copies (the project's CIFAR-10: rows 1017-9999 decoded from JPEG files,
    its README says), when the cell tests on that whole set in its order; else None."""
    path = data_root / f"{dataset}.npz"
    if not path.is_file():
        return None
    with np.load(path) as archive:
        if "x_test_exact" not in archive.files:
            return None
        mask = torch.from_numpy(archive["x_test_exact"]).bool()
    return mask if len(mask) == test_count else None


def accuracy_by_source(
    cell, data: ImageData, model_path: Path, exact: torch.Tensor, device: torch.device
) -> None:
    """The saved victim's accuracy (with the cell's test-time augmentation) on the bit-exact
    test images and on the lossy ones, each with its binomial standard error."""
    model = ARCHS.build(cell.arch, data.num_classes, data.image_shape)
    model.load_state_dict(torch.load(model_path, weights_only=True))
    model.to(device)
    config = cell.train
    for name, rows in (("bit-exact", exact), ("JPEG-decoded", ~exact)):
        acc = accuracy(
            model,
            data.x_test[rows],
            data.y_test[rows],
            device,
            config.eval_batch_size,
            config.amp,
            config.tta,
        )
        count = int(rows.sum())
        error = 100 * math.sqrt(acc / 100 * (1 - acc / 100) / count)
        print(f"  on the {count} {name} test images: {acc:.2f}% (± {error:.2f} standard error)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", default="fast")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--train-size", type=int, default=None, help="default: the full set")
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--arch", default=None, help="default: the protocol's (airbench)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: clean, emin, advtrain, probes (the bare-step and "
        "evaluation timings)",
    )
    parser.add_argument("--bare-steps", type=int, default=20)
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the bare step through torch.compile (whether it pays; the trainer "
        "runs eager)",
    )
    args = parser.parse_args()
    skip = {part for part in args.skip.split(",") if part}

    device = resolve_device(args.device)
    batch = args.batch_size
    protocol = resolve_protocol(args.protocol, args.dataset)
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: crafting is timed, not read
        grid = GridConfig(
            dataset=args.dataset,
            data_root=args.data_root,
            methods=["clean", "emin"],
            defenses=["none", "advtrain"],
            archs=[args.arch] if args.arch else None,
            seeds=[args.seed],
            epochs=args.epochs,
            batch_size=batch,
            lr=None if batch is None else protocol.lr * batch / protocol.batch_size,
            train_size=args.train_size,
            test_size=args.test_size,
            device=args.device,
            cache_dir=cache,
            progress=False,
            protocol=args.protocol,
        )
        cells = {(c.method_label, c.defense_label): c for c in grid.cells()}
        clean, emin = cells["clean", "none"], cells["emin", "advtrain"]
        started = time.perf_counter()
        data = load_cell_data(clean.dataset, clean.data_root, clean.train_size, clean.test_size)
        load_seconds = time.perf_counter() - started
        print(
            f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} "
            f"protocol={args.protocol} dataset={args.dataset} "
            f"train={len(data.y_train)} test={len(data.y_test)} "
            f"arch={clean.arch} epochs={clean.train.epochs} batch={clean.train.batch_size} "
            f"lr={clean.train.lr:g}"
        )
        print(f"loading: {load_seconds:.1f} s")
        throughput = (
            (lambda record: "timings skipped")
            if "probes" in skip
            else timing_probes(clean, data, device, args.bare_steps, args.compile)
        )
        if "clean" not in skip:
            model_path = Path(cache) / "clean-victim.pt"
            record = run_cell(clean, progress=False, data=data, model_path=model_path)
            print(
                f"clean cell: {record['wall_time_s']:.1f} s end to end ({throughput(record)}), "
                f"clean test accuracy {record['final_acc']:.2f}%  [GPU goal: ≤ 10 s at ≥ 93%]"
            )
            curve = ", ".join(f"{epoch['test_acc']:.1f}" for epoch in record["history"])
            print(f"  test accuracy by epoch: {curve}")
            exact = exact_test_rows(Path(args.data_root), args.dataset, len(data.y_test))
            if exact is not None and not bool(exact.all()):
                accuracy_by_source(clean, data, model_path, exact, device)
        if "emin" not in skip:
            started = time.perf_counter()
            poison = craft_poison(emin, data, progress=False)
            print(
                f"emin (sample-wise) crafting: {time.perf_counter() - started:.1f} s, "
                f"rounds {poison.meta.get('rounds')}, final error "
                f"{poison.meta.get('final_error')}  [GPU goal: ≤ 120 s]"
            )
        if "advtrain" not in skip:
            record = run_cell(emin, progress=False, data=data)
            print(
                f"emin/advtrain cell: {record['wall_time_s']:.1f} s end to end (crafting "
                f"{record['craft_time_s']:.1f} s, {throughput(record)}), clean test accuracy "
                f"{record['final_acc']:.2f}%"
            )


if __name__ == "__main__":
    main()
