"""The field's methods against the ISS countermeasures and adversarial training, on real CIFAR-10
under the CPU protocol, and which of the published orderings hold at this scale.

    python benchmarks/field_table.py --data-root ../shared/data/cifar10 [--workers 2]

Runs ``clean, emin, rem, tap, ops, ar, lsp, cuda`` × ``none, grayscale, jpeg, advtrain``, and
sample-wise ``random`` and class-wise ``emin`` under ``none``, with ``--protocol mini``
(``uebench list protocols``: on CIFAR-10 the airbench victim at width 16 and its recipe, 12000
training and 2000 test images, 10 epochs).  ``--workers N`` starts N ``uebench run`` processes
of one thread each on the same results folder: each cell is claimed before it runs, so they
share the grid without training a cell twice (on 2 cores, 2 processes of 1 thread beat 1 of
2); on a CPU with bf16 units their victims train in bf16 (``UEBENCH_CPU_BF16=1``: 1.2x
faster on one thread there; crafting stays fp32); ``UEBENCH_CPU_BF16=0`` runs an fp32 table.
Each worker first crafts its own share of the poisons (its methods under ``none``), so that
each poison is crafted once (a claim covers a cell, not the poison several cells share),
then goes on to the whole grid, its own methods first and the costly ``advtrain`` cells before
the rest, without waiting for the other.
Rerunning resumes.  ``--protocol fast --run-flags
'...'`` runs the same grid under another protocol or settings.  Then it prints the table and
checks each published finding:

* each method is unlearnable under standard training (at least 20 points below clean),
  class-wise EM too, and sample-wise random noise is not (at most 8 points);
* EM falls to grayscale (ISS: 93.07% on CIFAR-10, near clean's 92.41% under grayscale);
* LSP and AR fall to JPEG-10 (ISS: 83.01% and 85.15%, near clean's 85.38% under JPEG-10);
* EM falls to adversarial training (Huang et al. §4.3) and OPS survives it (Wu et al.: the L0
  shortcut is not in an L∞ ball);
* REM survives adversarial training better than EM (Fu et al.), under the table's ε = 8/255
  and, when its cells ran, at REM's own radius ρ_a = ρ_u = 4/255 (``advtrain:eps=4/255:
  alpha=2/255``), where the paper compares them;
* CUDA survives JPEG and grayscale (Sadasivan et al.).

``--more-defenses A,B`` then runs further countermeasures on the cached poisons, after the
timed table (the suite's candidates, REM's radius); ``--seeds 0-2`` runs every cell at three
victim seeds and the table shows their means.

"Falls" means within 15 points of clean training under the same countermeasure; "survives"
means at least 15 points below it.  The thresholds were chosen before the run; they live in
``uebench.scoring.findings``, which ``uebench bench`` states its findings with.
For every finding that does not hold it prints the cells' training curves.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from cpu_bf16 import cpu_has_bf16_units

from uebench.execution import CPU_BF16_ENV
from uebench.scoring.findings import MARGIN, UNLEARNABLE
from uebench.storage.records import read_record

METHODS = "clean,emin,rem,tap,ops,ar,lsp,cuda"
DEFENSES = "none,grayscale,jpeg,advtrain"
#: The grid's order: its cells run defense by defense (``uebench run`` walks defenses, then
#: methods), so ``advtrain``'s cells, each about 2.5× a standard one, go first; the two
#: workers then end within one short cell of each other instead of one long one.
LONGEST_FIRST = "advtrain,none,grayscale,jpeg"
EXTRA = "random,emin:form=class"  # under ``none`` only
#: Adversarial training at REM's own radius (ρ_a = ρ_u = 4/255, two steps of 2/255: the mini
#: protocol's step-to-radius ratio), where Fu et al. compare REM with EM.
AT_REM_RADIUS = "advtrain:eps=4/255:alpha=2/255"
HARMLESS = 8.0  # at most this many points below clean for sample-wise random noise


def orderings(acc: pd.DataFrame) -> list[tuple[str, bool, str, list[tuple[str, str]]]]:
    """Each published finding, whether it holds here, the numbers behind it, and the
    (method, defense) cells it rests on."""

    def falls(method: str, defense: str) -> tuple[bool, str]:
        value, clean = acc.loc[method, defense], acc.loc["clean", defense]
        return clean - value <= MARGIN, f"{value:.1f}% vs clean {clean:.1f}% under {defense}"

    def survives(method: str, defense: str, margin: float = MARGIN) -> tuple[bool, str]:
        value, clean = acc.loc[method, defense], acc.loc["clean", defense]
        return clean - value >= margin, f"{value:.1f}% vs clean {clean:.1f}% under {defense}"

    def check(text: str, method: str, defense: str, result: tuple[bool, str]):
        return (text, *result, [("clean", defense), (method, defense)])

    checks = []
    for method in [*METHODS.split(",")[1:], "emin:form=class"]:
        checks.append(
            check(
                f"{method} is unlearnable under standard training",
                method,
                "none",
                survives(method, "none", UNLEARNABLE),
            )
        )
    value, clean = acc.loc["random", "none"], acc.loc["clean", "none"]
    checks += [
        (
            "random noise is harmless under standard training",
            clean - value <= HARMLESS,
            f"{value:.1f}% vs clean {clean:.1f}% under none",
            [("clean", "none"), ("random", "none")],
        ),
        check("EM falls to grayscale", "emin", "grayscale", falls("emin", "grayscale")),
        check("LSP falls to JPEG-10", "lsp", "jpeg", falls("lsp", "jpeg")),
        check("AR falls to JPEG-10", "ar", "jpeg", falls("ar", "jpeg")),
        check("EM falls to adversarial training", "emin", "advtrain", falls("emin", "advtrain")),
        check("OPS survives adversarial training", "ops", "advtrain", survives("ops", "advtrain")),
        rem_versus_em(acc, "advtrain", "ε 8/255, twice REM's ρ"),
        check("CUDA survives JPEG-10", "cuda", "jpeg", survives("cuda", "jpeg")),
        check("CUDA survives grayscale", "cuda", "grayscale", survives("cuda", "grayscale")),
    ]
    if AT_REM_RADIUS in acc.columns:
        radius = "ρ_a = ρ_u = 4/255, the paper's comparison"
        checks.append(rem_versus_em(acc, AT_REM_RADIUS, radius))
    return checks


def rem_versus_em(
    acc: pd.DataFrame, defense: str, radius: str
) -> tuple[str, bool, str, list[tuple[str, str]]]:
    """REM survives adversarial training better than EM (Fu et al.), under ``defense``."""
    rem, emin = acc.loc["rem", defense], acc.loc["emin", defense]
    return (
        f"REM survives adversarial training better than EM ({radius})",
        rem <= emin - MARGIN,
        f"REM {rem:.1f}% vs EM {emin:.1f}% under {defense}",
        [("emin", defense), ("rem", defense)],
    )


def curve(record: dict) -> str:
    """A cell's training and clean test accuracy by epoch, as one line."""
    train = ", ".join(f"{epoch['train_acc']:.0f}" for epoch in record["history"])
    test = ", ".join(f"{epoch['test_acc']:.1f}" for epoch in record["history"])
    return f"train acc {train} | test acc {test}"


def split_for_crafting(methods: list[str], workers: int) -> list[list[str]]:
    """Deal the methods to the workers, the costly crafters first, so each crafts its own."""
    costly = [m for m in methods if m.split(":")[0] in ("emin", "rem", "tap")]
    cheap = [m for m in methods if m not in costly]
    shares: list[list[str]] = [[] for _ in range(workers)]
    for i, method in enumerate(costly + cheap):
        shares[i % workers].append(method)
    return shares


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
    parser.add_argument(
        "--more-defenses",
        default="",
        help="countermeasures run after the table's own, on its cached poisons: the suite's "
        f"candidates and {AT_REM_RADIUS} (REM at its own radius)",
    )
    parser.add_argument("--seeds", default="0", help="victim seeds, e.g. 0-2")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")

    def command(methods: str, defenses: str) -> list[str]:
        return [
            sys.executable, "-c", "import sys; from uebench.cli import main; sys.exit(main())",
            "run", "--dataset", "cifar10", "--data-root", args.data_root,
            "--protocol", args.protocol, "--methods", methods, "--defenses", defenses,
            "--out", args.out, "--threads", "1", "--no-progress", "--seeds", args.seeds,
            *shlex.split(args.run_flags),
        ]  # fmt: skip

    # One-thread workers train mini's victims 1.2x faster in bf16 on a CPU with bf16 units
    # (benchmarks/cpu_bf16.py; uebench.execution); UEBENCH_CPU_BF16 set outside wins.
    worker_env = {**({CPU_BF16_ENV: "1"} if cpu_has_bf16_units() else {}), **os.environ}
    logs = [Path(args.out).parent / f"field-table-worker{i}.log" for i in range(args.workers)]
    for log in logs:
        log.parent.mkdir(parents=True, exist_ok=True)

    def phase(sequences: list[list[list[str]]], mode: str) -> list[float]:
        """Each worker runs its commands one after the other; returns when each finished its
        first command (seconds from the start)."""
        firsts = [0.0] * len(sequences)

        def work(index: int, commands: list[list[str]]) -> int:
            with logs[index].open(mode) as log:
                for position, cmd in enumerate(commands):
                    status = subprocess.run(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env
                    ).returncode
                    if position == 0:
                        firsts[index] = time.perf_counter() - started
                    if status:
                        return status
            return 0

        with ThreadPoolExecutor(len(sequences)) as pool:
            status = list(pool.map(work, range(len(sequences)), sequences))
        if any(status):
            sys.exit(f"a worker exited {status}; see {', '.join(map(str, logs))}")
        return firsts

    started = time.perf_counter()
    methods = [*METHODS.split(","), *EXTRA.split(",")]
    shares = split_for_crafting(methods, args.workers)
    # Each worker first crafts its own share of the poisons (under ``none``), then runs the
    # grid, its own methods first (their poisons are ready; another worker's may still be
    # crafting, and a cell needing it would wait on the cache's lock), then the rest, every
    # other worker walking them backwards so the two do not queue on the same method's cells.
    # No worker waits for the others between the two: cell ids do not depend on the order.
    table_methods = METHODS.split(",")
    sequences = []
    for i, share in enumerate(shares):
        rest = [m for m in table_methods if m not in share]
        order = [m for m in table_methods if m in share] + (rest if i % 2 == 0 else rest[::-1])
        crafting = [command(",".join(share), "none")] if share else []
        sequences.append([*crafting, command(",".join(order), LONGEST_FIRST)])
    crafted = max(phase(sequences, "w"))
    wall = time.perf_counter() - started
    if args.more_defenses:  # after the timed table: its wall time stays the 34 cells'
        orders = [METHODS, ",".join(reversed(table_methods))]
        phase([[command(orders[i % 2], args.more_defenses)] for i in range(args.workers)], "a")
    out = Path(args.out)
    table = pd.read_csv(out / "results.csv")
    defenses = [*DEFENSES.split(","), *filter(None, args.more_defenses.split(","))]
    acc = table.pivot_table(index="method", columns="defense", values="final_acc", sort=False)
    acc = acc.reindex(index=methods, columns=defenses)
    print(
        f"{len(table)} cells, {args.workers} worker(s), {wall:.0f} s this run for the table's "
        f"own cells (the last worker done crafting at {crafted:.0f} s; a resumed run redoes "
        "nothing)"
    )
    print(f"protocol {table['protocol'].iloc[0]}, {table['train_size'].iloc[0]} training images")
    # One rounding for the table and the checks below (pandas rounds halves differently).
    print(acc.to_string(float_format=lambda value: f"{value:.1f}", na_rep=""))
    cells = {(row.method, row.defense): row.cell_id for row in table.itertuples()}
    for text, ok, detail, rests_on in orderings(acc):
        print(f"  {'HOLDS' if ok else 'NOT  '}  {text}: {detail}")
        if not ok:
            for method, defense in rests_on:
                record = read_record(out / "cells" / f"{cells[method, defense]}.json")
                print(f"           {method} / {defense}: {curve(record)}")


if __name__ == "__main__":
    main()
