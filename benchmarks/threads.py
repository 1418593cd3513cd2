"""What torch's thread count costs on a shared CPU, and what uebench's default picks.

    python benchmarks/threads.py [--steps 30]

Times training steps of the mini protocol's victim on the embedded default (``smallcnn`` at
width 16, batch 128 of 16-px images) with 1 thread and with one thread per core, first on an
otherwise idle machine, then while a neighbour process (another torch job at its default
thread count) keeps the cores busy.  It also prints the thread count uebench's default
(``uebench.grid.threads``) chooses in each situation.  Run it on an idle machine: it makes its
own neighbour.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from typing import Any

import torch
import torch.nn.functional as F

from uebench.archs import smallcnn
from uebench.grid.threads import choose_threads, usable_cores


def neighbour(stop: Any) -> None:
    """Another torch job at its default threads: matrix products until told to stop."""
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def step_time(threads: int, steps: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = smallcnn(10, (3, 16, 16), width=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(128, 3, 16, 16), torch.randint(0, 10, (128,))
    for _ in range(3):  # warm-up
        F.cross_entropy(model(x), y).backward()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (time.perf_counter() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    cores = usable_cores()
    print(f"{cores} usable cores; ms per training step (mean of {args.steps})")
    rows = []
    spawn = mp.get_context("spawn")
    for situation in ("idle", "busy neighbour"):
        stop = spawn.Event()
        other = None
        if situation != "idle":
            other = spawn.Process(target=neighbour, args=(stop,))
            other.start()
            time.sleep(2)
        _, why = choose_threads(None)
        for threads in sorted({1, cores}):
            rows.append((situation, threads, step_time(threads, args.steps)))
            print(f"  {situation:15s} threads={threads}: {rows[-1][2]:8.1f} ms")
        print(f"  {situation:15s} uebench's default: {why}")
        if other is not None:
            stop.set()
            other.terminate()
            other.join()


if __name__ == "__main__":
    main()
