"""A victim trained in fp32 and in bf16 on this CPU: time and accuracy (a script, not a test).

    python benchmarks/cpu_bf16.py --data-root ../shared/data/cifar10          # one thread
    python benchmarks/cpu_bf16.py --defenses none,grayscale --seeds 0,1

Runs ``mini``'s CIFAR-10 ``clean`` cell (the airbench victim at width 16, 12000 images, 10
epochs) under each of ``--defenses`` through ``uebench run`` with ``UEBENCH_CPU_BF16=0`` (fp32,
the default) and ``=1`` (bf16 autocast of the training step and evaluation), alternating which
goes first, each in a fresh results folder, one thread each (as ``benchmarks/field_table.py``
runs its workers), and prints each run's wall time and final accuracy, then the median
speed-up.  It says first whether the CPU has bf16 units (AVX512-BF16 or AMX): without them
oneDNN emulates bf16 and the ratio comes out below 1.  Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from uebench.execution import CPU_BF16_ENV


def cpu_has_bf16_units() -> bool:
    """AVX512-BF16 or AMX, which oneDNN's bf16 convolutions use (torch's private probes)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def run_clean_cell(
    data_root: str, defense: str, seed: int, bf16: bool, threads: int
) -> tuple[float, float]:
    """Wall seconds and final accuracy of one ``mini`` clean cell in a fresh folder."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-c", "import sys; from uebench.cli import main; sys.exit(main())",
            "run", "--dataset", "cifar10", "--data-root", data_root, "--protocol", "mini",
            "--methods", "clean", "--defenses", defense, "--seeds", str(seed),
            "--threads", str(threads), "--no-progress", "--out", out,
        ]  # fmt: skip
        env = {**os.environ, CPU_BF16_ENV: "1" if bf16 else "0"}
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        (record,) = Path(out, "cells").glob("*.json")
        return seconds, json.loads(record.read_text())["final_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--defenses", default="none", help="e.g. none,grayscale")
    parser.add_argument("--seeds", default="0", help="victim seeds, e.g. 0,1,2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"this CPU has bf16 units: {cpu_has_bf16_units()}")
    ratios = []
    runs = [(d, int(s)) for d in args.defenses.split(",") for s in args.seeds.split(",")]
    for position, (defense, seed) in enumerate(runs):
        order = (False, True) if position % 2 == 0 else (True, False)
        done = {
            bf16: run_clean_cell(args.data_root, defense, seed, bf16, args.threads)
            for bf16 in order
        }
        (fp32_s, fp32_acc), (bf16_s, bf16_acc) = done[False], done[True]
        ratios.append(fp32_s / bf16_s)
        print(
            f"clean / {defense}, seed {seed}: fp32 {fp32_s:.0f} s, {fp32_acc:.1f}%; "
            f"bf16 {bf16_s:.0f} s, {bf16_acc:.1f}%; bf16 {ratios[-1]:.2f}x as fast"
        )
    print(f"median speed-up of bf16: {statistics.median(ratios):.2f}x ({args.threads} thread(s))")


if __name__ == "__main__":
    main()
