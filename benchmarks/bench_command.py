"""Time ``uebench bench SPEC`` from nothing, as on a fresh clone: a new results folder and an
empty poison cache, the shipped reference for the field's rows (a script, not a test).

    python benchmarks/bench_command.py [lsp] [--data-root ../shared/data/cifar10] \\
        [--out runs/bench-timing] [--goal-minutes 30]

Runs the command exactly as the README gives it (with ``--out`` and ``--cache-dir`` in a fresh
folder, deleted first), times it end to end (loading, crafting, every cell of the suite, the
table and the report), and prints the command's own output followed by the wall time against
the goal.  Run it alone on an idle machine: another busy process on the same cores slows torch
down many times.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from uebench.cli import main as uebench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", default="lsp", help="the method to bench")
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--out", default="runs/bench-timing", help="fresh folder (deleted first)")
    parser.add_argument("--goal-minutes", type=float, default=30.0)
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    command = [
        "bench", args.spec, "--data-root", args.data_root,
        "--out", str(out / "bench"), "--cache-dir", str(out / "cache"),
    ]  # fmt: skip
    start = time.perf_counter()
    status = uebench(command)
    seconds = time.perf_counter() - start
    minutes = seconds / 60
    verdict = "within" if minutes <= args.goal_minutes else "OVER"
    print(f"uebench {' '.join(command)}: exit {status}, {seconds:.0f} s ({minutes:.1f} min)")
    print(f"{verdict} the goal of {args.goal_minutes:g} minutes")
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
