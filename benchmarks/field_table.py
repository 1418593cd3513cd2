"""The field's methods against the ISS countermeasures and adversarial training, on real CIFAR-10
under the CPU protocol, and which of the published orderings hold at this scale.

    python benchmarks/field_table.py --data-root ../shared/data/cifar10 [--workers 2]

Runs ``clean, emin, rem, tap, ops, ar, lsp, cuda`` × ``none, grayscale, jpeg, advtrain`` with
``--protocol mini`` (2500 training and 1000 test images, ResNet-18 at width 8 for every cell,
12 epochs; ``uebench list protocols``).  ``--workers N`` starts N ``uebench run`` processes of
one thread each on the same results folder: each cell is claimed before it runs, so they share
the grid without training a cell twice (on 2 cores, 2 processes of 1 thread beat 1 of 2).
Rerunning resumes.  ``--protocol fast --run-flags '...'`` runs the same grid with the fast
victim (a CPU-sized one: ``--run-flags`` sets width, subset, epochs, batch).  Then it prints
the table and checks each published ordering:

* EM falls to grayscale (ISS: 93.07% on CIFAR-10, near clean's 92.41% under grayscale);
* LSP and AR fall to JPEG-10 (ISS: 83.01% and 85.15%, near clean's 85.38% under JPEG-10);
* OPS survives adversarial training (Wu et al.: the L0 shortcut is not in an L∞ ball);
* REM survives adversarial training better than EM (Fu et al.);
* CUDA survives JPEG and grayscale (Sadasivan et al.).

"Falls" means within 15 points of clean training under the same countermeasure; "survives"
means at least 15 points below it.  The thresholds are this script's, chosen before the run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

METHODS = "clean,emin,rem,tap,ops,ar,lsp,cuda"
DEFENSES = "none,grayscale,jpeg,advtrain"
MARGIN = 15.0


def orderings(acc: pd.DataFrame) -> list[tuple[str, bool, str]]:
    """Each published ordering, whether it holds here, and the numbers behind it."""

    def falls(method: str, defense: str) -> tuple[bool, str]:
        value, clean = acc.loc[method, defense], acc.loc["clean", defense]
        return clean - value <= MARGIN, f"{value:.1f}% vs clean {clean:.1f}% under {defense}"

    def survives(method: str, defense: str) -> tuple[bool, str]:
        value, clean = acc.loc[method, defense], acc.loc["clean", defense]
        return clean - value >= MARGIN, f"{value:.1f}% vs clean {clean:.1f}% under {defense}"

    rem, emin = acc.loc["rem", "advtrain"], acc.loc["emin", "advtrain"]
    checks = [
        ("EM falls to grayscale", *falls("emin", "grayscale")),
        ("LSP falls to JPEG-10", *falls("lsp", "jpeg")),
        ("AR falls to JPEG-10", *falls("ar", "jpeg")),
        ("OPS survives adversarial training", *survives("ops", "advtrain")),
        (
            "REM survives adversarial training better than EM",
            rem <= emin - MARGIN,
            f"REM {rem:.1f}% vs EM {emin:.1f}% under advtrain",
        ),
        ("CUDA survives JPEG-10", *survives("cuda", "jpeg")),
        ("CUDA survives grayscale", *survives("cuda", "grayscale")),
    ]
    for method in METHODS.split(",")[1:]:
        ok, detail = survives(method, "none")
        checks.append((f"{method} is unlearnable under standard training", ok, detail))
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--out", default="runs/field-table")
    parser.add_argument("--workers", type=int, default=2, help="uebench processes, 1 thread each")
    parser.add_argument("--protocol", default="mini", help="e.g. fast (with --run-flags on a CPU)")
    parser.add_argument(
        "--run-flags",
        default="",
        help="more `uebench run` flags, e.g. '--archs airbench:width=16 --train-size 10000 "
        "--test-size 1000 --epochs 8 --batch-size 256 --lr 0.375'",
    )
    args = parser.parse_args()

    def command(methods: str) -> list[str]:
        return [
            sys.executable, "-c", "import sys; from uebench.cli import main; sys.exit(main())",
            "run", "--dataset", "cifar10", "--data-root", args.data_root,
            "--protocol", args.protocol, "--methods", methods, "--defenses", DEFENSES,
            "--out", args.out, "--threads", "1", "--no-progress", *shlex.split(args.run_flags),
        ]  # fmt: skip

    # Every other worker walks the methods backwards: the workers then start on different
    # poisons instead of one waiting while the other crafts the poison both need next.  Cell
    # ids do not depend on the order, so they still share one grid.
    orders = [METHODS, ",".join(reversed(METHODS.split(",")))]
    started = time.perf_counter()
    logs = [Path(args.out).parent / f"field-table-worker{i}.log" for i in range(args.workers)]
    for log in logs:
        log.parent.mkdir(parents=True, exist_ok=True)
    workers = [
        subprocess.Popen(command(orders[i % 2]), stdout=log.open("w"), stderr=subprocess.STDOUT)
        for i, log in enumerate(logs)
    ]
    status = [worker.wait() for worker in workers]
    if any(status):
        sys.exit(f"a worker exited {status}; see {', '.join(map(str, logs))}")
    wall = time.perf_counter() - started
    table = pd.read_csv(Path(args.out) / "results.csv")
    acc = table.pivot_table(index="method", columns="defense", values="final_acc", sort=False)
    acc = acc.reindex(index=METHODS.split(","), columns=DEFENSES.split(","))
    print(f"{len(table)} cells, {args.workers} worker(s), {wall:.0f} s (this run; 0 if resumed)")
    print(f"protocol {table['protocol'].iloc[0]}, {table['train_size'].iloc[0]} training images")
    print(acc.round(1).to_string())
    for text, ok, detail in orderings(acc):
        print(f"  {'HOLDS' if ok else 'NOT  '}  {text}: {detail}")


if __name__ == "__main__":
    main()
