"""The time a grid estimates before its first cell, beside what its cells took (a script, not a
test).

    python benchmarks/field_table.py --data-root ../shared/data/cifar10     # once, ~46 min
    python benchmarks/estimate_accuracy.py --data-root ../shared/data/cifar10 \\
        --records runs/field-table/table

First the step probe on its own: ``step_seconds`` ``--rounds`` × 3 times on a small model whose
step is short next to what each probe run pays once (``smallcnn:width=4`` at batch 1024 on 8×8
digits, as a GPU's step is short), beside the step measured over 20 epochs of one step and
beside a batch of 8 timed and scaled up to 1024 (which counts each run's fixed costs per
step).  Then
the estimate is made for the field table's 34 cells under ``mini``, as one of its workers makes
it (a fresh process of one thread), with nothing else running and with a second one-thread
process training ``mini``'s victim beside it (the other worker); each is repeated ``--rounds``
times.  Its training part is set beside the training the finished table's records measured
(each cell's ``wall_time_s`` less its crafting), its crafting range beside the crafting they
measured.  The records come from two workers sharing the machine, as the table runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from uebench.storage.records import read_record

#: A fresh one-thread process that prints the field table's estimate as JSON.
ESTIMATE = """
import json, sys, tempfile, torch
torch.set_num_threads(1)
from uebench.grid import GridConfig
from uebench.grid.estimate import estimate_grid
data_root = sys.argv[1]
cells = []
with tempfile.TemporaryDirectory() as empty:
    for methods, defenses in (
        ("clean,emin,rem,tap,ops,ar,lsp,cuda", "advtrain,none,grayscale,jpeg"),
        ("random,emin:form=class", "none"),
    ):
        config = GridConfig(
            dataset="cifar10", data_root=data_root, protocol="mini",
            methods=methods.split(","), defenses=defenses.split(","), out=empty + "/table",
            cache_dir=empty + "/cache", progress=False,
        )
        cells += config.cells()
    estimate = estimate_grid(cells)
print(json.dumps({"cells": estimate.cells, "training": estimate.training_s,
                  "crafting": list(estimate.crafting_s)}))
"""
#: The other worker: one thread training mini's victim until stopped.
BUSY = """
import torch, torch.nn.functional as F
torch.set_num_threads(1)
from uebench.archs.airbench import airbench
from uebench.execution import execution_for
execution = execution_for(torch.device("cpu"))
model = execution.place(airbench(10, (3, 32, 32), width=16), torch.device("cpu"))
images, labels = torch.rand(256, 3, 32, 32), torch.randint(0, 10, (256,))
model.fit_to_training_images((images * 255).to(torch.uint8))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
while True:
    F.cross_entropy(model(execution.inputs(images)), labels).backward()
    optimizer.step()
    optimizer.zero_grad()
"""


def probe_beside_steady_step(rounds: int) -> None:
    """The probe's readings of a short step, beside the step itself."""
    import torch

    from uebench.grid.cell import load_cell_data
    from uebench.grid.estimate import PROBE_SMALL_BATCH, probe_runs, step_seconds
    from uebench.registry import ARCHS
    from uebench.training import TrainConfig, train

    torch.set_num_threads(1)
    data = load_cell_data("digits:size=8", None, 1400, 100)
    config = TrainConfig(batch_size=1024)
    arch, device = "smallcnn:width=4", torch.device("cpu")
    readings = sorted(step_seconds(arch, data, config, device) for _ in range(3 * rounds))
    scaled = []  # a batch of 8 scaled up, its run's fixed costs counted per step
    for _ in range(3 * rounds):
        timed = probe_runs(arch, data, config, device)
        timed(PROBE_SMALL_BATCH, PROBE_SMALL_BATCH)
        scaled.append(timed(PROBE_SMALL_BATCH, PROBE_SMALL_BATCH) * 1024 / PROBE_SMALL_BATCH)
    x = torch.randint(0, 256, (1024, *data.image_shape), dtype=torch.uint8)
    y = torch.randint(0, data.num_classes, (1024,))

    def run(epochs: int) -> float:
        model = ARCHS.build(arch, data.num_classes, data.image_shape)
        started = time.perf_counter()
        train(model, x, y, replace(config, epochs=epochs), device)
        return time.perf_counter() - started

    run(1)
    steady = min((run(21) - run(1)) / 20 for _ in range(2))
    print(f"{arch} at batch 1024: {steady * 1000:.0f} ms a step over 20 epochs of one step")
    for name, values in (("probe", readings), ("a batch of 8 scaled up", sorted(scaled))):
        shown = ", ".join(f"{value * 1000:.0f}" for value in values)
        print(f"{name}: {shown} ms (sorted); the worst {max(values) / steady:.1f}× the step")


def measured(records: Path) -> tuple[int, float, float]:
    """The finished table's cells, their training seconds and their crafting seconds."""
    files = sorted((records / "cells").glob("*.json"))
    if not files:
        sys.exit(f"estimate_accuracy: no cell records in {records / 'cells'}; run field_table.py")
    training = crafting = 0.0
    for path in files:
        record = read_record(path)
        crafting += record["craft_time_s"]
        training += record["wall_time_s"] - record["craft_time_s"]
    return len(files), training, crafting


def estimate(data_root: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", ESTIMATE, data_root], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--records", required=True, help="a finished field table's folder")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    cells, training, crafting = measured(Path(args.records))  # a missing folder fails first
    probe_beside_steady_step(args.rounds)
    print(f"records: {cells} cells, training {training:.0f} s, crafting {crafting:.0f} s")
    for load in ("alone", "beside a busy worker"):
        busy = None
        if load != "alone":
            busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            for round_ in range(1, args.rounds + 1):
                guess = estimate(args.data_root)
                low, high = guess["crafting"]
                print(
                    f"{load}, round {round_}: {guess['cells']} cells, training "
                    f"{guess['training']:.0f} s ({guess['training'] / training:.2f}× measured), "
                    f"crafting {low:.0f}–{high:.0f} s"
                )
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


if __name__ == "__main__":
    main()
