"""The recovery attack against η (a script, not a test).

Victims trained on poisoned data (default: ``emin`` class-wise) are fine-tuned on a stratified
20% clean subset within ℓ2 distance η of their weights (``recover:eta=E``, one grid cell per η;
the victim is retrained in every cell, identically, from the same seed).  Printed per η: the
poisoned victim's accuracy, the recovered accuracy, the same projected fine-tuning from a random
initialization, unconstrained fine-tuning from scratch on the same clean subset, and the best of
K random directions at distance η (chosen on the clean subset; the oracle column chooses on the
test set, as the public code does).

    OMP_NUM_THREADS=1 python benchmarks/recovery_eta.py --out runs/recovery_eta \
        --cache-dir runs/cache   # reuse the poisons of benchmarks/pue_vs_emin.py
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from uebench.grid import GridConfig, run_grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/recovery_eta")
    parser.add_argument("--cache-dir", default=None, help="share poisons with another run")
    parser.add_argument(
        "--methods",
        default="emin:form=class:source=[resnet18:width=8];"
        "pue:draws=5:noise_draws=5:source=[resnet18:width=8]",
        help="';'-separated method specs",
    )
    parser.add_argument("--arch", default="resnet18:width=8")
    parser.add_argument("--etas", default="0.2,0.5,1.0,2.0")
    parser.add_argument("--recover", default="", help="extra recover options, e.g. :project=ball")
    parser.add_argument("--train-size", type=int, default=None, help="default: all 4313")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()

    etas = [float(v) for v in args.etas.split(",")]
    defenses = [f"recover:eta={eta:g}{args.recover}" for eta in etas]
    started = time.perf_counter()
    table = run_grid(
        GridConfig(
            # The layout and protocol its quoted numbers were measured with.
            dataset="cluttered-digits:split=image:contrast=0.2:digit_size=8:clutter=0.3",
            protocol="paper",
            methods=[m for m in args.methods.split(";") if m],
            defenses=defenses,
            archs=[args.arch],
            epochs=args.epochs,
            train_size=args.train_size,
            test_size=args.test_size,
            out=args.out,
            cache_dir=args.cache_dir,
            progress=False,
        )
    )
    rows = []
    for _, cell in table.iterrows():
        record = json.loads((Path(args.out) / "cells" / f"{cell['cell_id']}.json").read_text())
        notes = record["countermeasure_notes"]
        rows.append(
            {
                "method": record["method"].split(":")[0],
                "eta": notes["recover_eta"],
                "poisoned": record["trained_acc"],
                "recovered": record["final_acc"],
                "random-init projected": notes.get("baseline_acc"),
                "scratch (free)": notes.get("scratch_acc"),
                "best direction": notes.get("directions_acc"),
                "direction oracle": notes.get("directions_oracle_acc"),
                "steps": notes["recover_steps"],
                "seconds": notes["recover_seconds"],
            }
        )
    frame = pd.DataFrame(rows).sort_values(["method", "eta"])
    options = record["config"]["identity"]["defense"][0]["options"]
    setup = (
        f"{args.arch}, {args.train_size or 'all'} train / {args.test_size} test, "
        f"{args.epochs} epochs; projection {options['project']}, clean subset "
        f"{notes['recover_clean_size']} images, {notes['recover_epochs']} fine-tuning epochs, "
        f"lr {options['lr']:g}, K={options['directions']}"
    )
    print(
        f"recovery attack, clean test accuracy in % ({setup}); grid "
        f"{time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}"
    )
    print(frame.round(2).to_string(index=False))


if __name__ == "__main__":
    main()
