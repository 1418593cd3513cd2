"""Time the design card's headline command on the embedded default and check the paper's findings.

    python benchmarks/headline.py [--out runs/headline] [--threads N] [--seed 0]

1. Runs ``uebench run --methods emin,random,emax --defenses cutmix,advtrain`` exactly as a new
   user would (no other flag but ``--out``), in a fresh folder, and times it end to end:
   crafting included, its six cells.
2. Adds the cells the findings are judged against (``clean`` and standard training, ``none``);
   the six cells above are reused from the same folder, not recomputed.
3. Prints every cell's final clean test accuracy and each check of the paper's findings:
   sample-wise error-minimizing noise within 15 points of chance under standard training;
   random and error-maximizing noise within 10 points of clean training; CutMix does not rescue
   error-minimizing noise (within 20 points of chance); adversarial training does (at least 15
   points above standard training on the same poison).

Run it alone on an idle machine for a timing: another busy process on the same cores slows
torch down many times (uebench picks fewer threads then and says so).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

from uebench.cli import main as uebench

HEADLINE = ["--methods", "emin,random,emax", "--defenses", "cutmix,advtrain"]
FULL = ["--methods", "clean,emin,random,emax", "--defenses", "none,cutmix,advtrain"]


def run(argv: list[str]) -> float:
    started = time.perf_counter()
    status = uebench(["run", *argv])
    if status != 0:
        sys.exit(f"uebench run {' '.join(argv)} exited {status}")
    return time.perf_counter() - started


def checks(table: pd.DataFrame, chance: float) -> list[tuple[str, bool, str]]:
    acc = table.set_index(["method", "defense"])["final_acc"]
    clean, emin = acc["clean", "none"], acc["emin", "none"]
    return [
        (
            "emin (sample-wise), standard training: within 15 points of chance",
            emin <= chance + 15,
            f"{emin:.1f}% vs chance {chance:.1f}%",
        ),
        (
            "random noise: within 10 points of clean training",
            abs(acc["random", "none"] - clean) <= 10,
            f"{acc['random', 'none']:.1f}% vs clean {clean:.1f}%",
        ),
        (
            "emax noise: within 10 points of clean training",
            abs(acc["emax", "none"] - clean) <= 10,
            f"{acc['emax', 'none']:.1f}% vs clean {clean:.1f}%",
        ),
        (
            "CutMix does not rescue emin: within 20 points of chance",
            acc["emin", "cutmix"] <= chance + 20,
            f"{acc['emin', 'cutmix']:.1f}%",
        ),
        (
            "adversarial training rescues emin: >= 15 points above standard training",
            acc["emin", "advtrain"] >= emin + 15,
            f"{acc['emin', 'advtrain']:.1f}% vs {emin:.1f}%",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/headline", help="fresh folder (deleted first)")
    parser.add_argument("--threads", type=int, help="torch threads (default: uebench decides)")
    parser.add_argument("--seed", default="0")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    common = ["--out", str(out / "grid"), "--seeds", args.seed]
    if args.threads:
        common += ["--threads", str(args.threads)]

    headline_s = run([*HEADLINE, *common])
    extra_s = run([*FULL, *common, "--no-progress"])
    table = pd.read_csv(out / "grid" / "results.csv")
    chance = 100.0 / float(table["num_classes"].iloc[0])
    print(f"\nheadline command (6 cells, crafting included): {headline_s:.0f} s")
    print(f"the 6 comparison cells (clean, standard training): {extra_s:.0f} s more")
    print(f"chance: {chance:.1f}%; protocol: {table['protocol'].iloc[0]}")
    shown = table.pivot_table(index="method", columns="defense", values="final_acc", sort=False)
    print(shown.round(1).to_string())
    print("cell times (s):")
    times = table.pivot_table(index="method", columns="defense", values="wall_time_s", sort=False)
    print(times.round(0).to_string())
    results = checks(table, chance)
    for text, ok, detail in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}: {detail}")
    print(f"  {'PASS' if headline_s <= 600 else 'FAIL'}  headline within 10 minutes")
    print(f"{sum(ok for _, ok, _ in results) + (headline_s <= 600)} of {len(results) + 1} hold")


if __name__ == "__main__":
    main()
