"""How a grid's wall time scales with Ray workers, against the local backend.

    python benchmarks/ray_scaling.py                 # the measurement (minutes, idle machine)
    python benchmarks/ray_scaling.py --quick         # a smoke run of the script itself
    python benchmarks/ray_scaling.py --device cuda   # one worker per GPU (1, then all GPUs)

Runs one small grid (8 cells on the embedded ``cluttered-digits``: clean, random sample- and
class-wise, class-wise error-minimizing noise, seeds 0 and 1; ``smallcnn`` victims, 3 epochs)
three times, each into a fresh folder with a fresh poison cache so crafting is included:

1. the local backend, 1 torch thread;
2. Ray with 1 worker (a local instance of ``num_cpus=1``; 1 CPU and 1 thread per cell);
3. Ray with 2 workers (``num_cpus=2``).

It prints each wall time (the ``uebench.run`` call; for Ray, once the instance is up, its
worker processes warming up included) and the speed-up of 2 workers over 1 as a
ratio of two times measured in this one run.  On a 2-core machine the issue's goal is 1.7x or
more.  Timings mean something only on an otherwise idle machine.

With ``--device cuda`` the workers are GPUs (``num_gpus`` of the local instance; one GPU per
cell) instead of CPUs; ``--workers`` then counts GPUs (at most the machine's) unless
``--gpus-per-cell`` shares them (0.5: two cells per GPU).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

import uebench


def grid(args: argparse.Namespace) -> dict[str, Any]:
    methods = ["clean", "random", "random:form=class", args.emin]
    return {
        "dataset": "cluttered-digits",
        "methods": methods,
        "seeds": [0, 1],
        "archs": [args.arch],
        "epochs": args.epochs,
        "train_size": args.train_size,
        "device": args.device,
        "progress": False,
    }


def timed_run(folder: Path, options: dict[str, Any]) -> tuple[float, int]:
    """Seconds for one grid into a fresh ``folder`` (results and cache), and its cell count."""
    shutil.rmtree(folder, ignore_errors=True)
    started = time.perf_counter()
    table = uebench.run(**options, out=str(folder / "out"), cache_dir=str(folder / "cache"))
    return time.perf_counter() - started, len(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--arch", default="smallcnn:width=16")
    parser.add_argument(
        "--emin",
        default="emin:form=class:source=[smallcnn:width=8]:max_rounds=10",
        help="the one costly crafting (kept small so it does not dominate the grid)",
    )
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts, e.g. 1,2 or 1,4,8")
    parser.add_argument("--gpus-per-cell", type=float, default=None)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 epoch, 500 images, tiny models"
    )
    parser.add_argument("--folder", default=None, help="where the runs go (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.train_size, args.arch = 1, 500, "smallcnn:width=4"
        args.emin = "emin:form=class:source=[smallcnn:width=4]:max_rounds=2"
    workers = [int(count) for count in args.workers.split(",")]
    gpu = args.device.startswith("cuda")
    root = Path(args.folder or tempfile.mkdtemp(prefix="uebench-ray-scaling-"))
    options = grid(args)
    print(f"grid: {options}; runs in {root}")

    seconds, cells = timed_run(root / "local", {**options, "threads": 1})
    times = {"local, 1 thread": seconds}
    print(f"  local backend, 1 thread: {seconds:7.1f} s ({cells} cells)")
    for count in workers:
        resources = {"num_gpus": count, "num_cpus": max(count, 2)} if gpu else {"num_cpus": count}
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False, **resources)
        start_up = time.perf_counter() - started
        ray_options = {**options, "backend": "ray", "threads": 1}
        if args.gpus_per_cell is not None:
            ray_options["gpus_per_cell"] = args.gpus_per_cell
        try:
            seconds, cells = timed_run(root / f"ray{count}", ray_options)
        finally:
            ray.shutdown()
        unit = "GPU" if gpu else "CPU"
        times[f"ray, {count} {unit}"] = seconds
        print(
            f"  Ray, {count} {unit} worker(s): {seconds:7.1f} s ({cells} cells; Ray itself "
            f"started in {start_up:.1f} s, not counted)"
        )
    local = times["local, 1 thread"]
    first = times[f"ray, {workers[0]} {'GPU' if gpu else 'CPU'}"]
    for name, seconds in times.items():
        print(f"  {name:18s} {seconds:7.1f} s  x{local / seconds:4.2f} vs local")
    for count in workers[1:]:
        seconds = times[f"ray, {count} {'GPU' if gpu else 'CPU'}"]
        print(f"speed-up of {count} workers over {workers[0]}: {first / seconds:.2f}x")
    if not args.folder:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
