"""Why each poison works or fails, on a CIFAR-10 subset: one table from one command.

    python benchmarks/poison_diagnostics.py --data-root ../shared/data/cifar10

Runs every method in ``--methods`` (cheap ones first) against standard training under the
``mini`` protocol (on CIFAR-10 the ``airbench:width=16`` victim and source with the fast recipe,
10 epochs; ``uebench list protocols``) on a stratified subset (``--train-size``,
``--test-size``), then prints per method:

* the published perturbation's size (``poison.apply(x) − x``, 8-bit rounding included): mean
  and largest L2 norm and largest L∞ (in 1/255) against the method's threat model;
* ``separability``: the record's ``shortcut_separability``, held-out accuracy of a linear
  classifier on the perturbations alone (Yu et al., KDD 2022);
* ``train≥90``: the first epoch the victim's training accuracy passes 90 % (clean row's beside
  it), its mean training accuracy over the epochs, and the shortcut-speed reading ``uebench
  diagnose`` gives (Zhu et al., AAAI 2024);
* the victim's final clean test accuracy.

Rerunning resumes (records and poisons are kept under ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from uebench.analysis.diagnostics import (
    clean_baselines,
    first_epoch_above,
    mean_train_acc,
    record_setting,
    shortcut_speed,
)
from uebench.grid import GridConfig, run_grid
from uebench.grid.cell import load_cell_data
from uebench.grid.store import ResultStore
from uebench.poison import Poison

#: Cheapest first: no model, then one crafting loop each.  rem, pue and emin-lbfgs take far
#: longer on a CPU and are left to ``--methods``.
METHODS = "clean,random,random:form=class,ops,ar,lsp,cuda,emin:form=class,emin,emax,tap"


def published_norms(poison: Poison, x: torch.Tensor) -> dict[str, float]:
    """Mean and largest L2 and largest L∞ (×255) of the changes ``poison`` publishes."""
    noised = poison.rows >= 0
    if not bool(noised.any()):
        return {"L2 mean": 0.0, "L2 max": 0.0, "Linf max (/255)": 0.0}
    change = (poison.apply(x).float() - x.float())[noised] / 255.0
    l2 = change.flatten(1).norm(dim=1)
    return {
        "L2 mean": float(l2.mean()),
        "L2 max": float(l2.max()),
        "Linf max (/255)": float(change.abs().amax()) * 255,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data/cifar10")
    parser.add_argument("--out", default="runs/poison-diagnostics")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    out = Path(args.out)
    config = GridConfig(
        dataset="cifar10",
        data_root=args.data_root,
        methods=args.methods.split(","),
        defenses=["none"],
        protocol="mini",
        train_size=args.train_size,
        test_size=args.test_size,
        out=str(out / "run"),
        cache_dir=str(out / "cache"),
        threads=args.threads,
        progress=False,
    )
    started = time.perf_counter()
    run_grid(config)
    print(f"grid: {time.perf_counter() - started:.0f} s (shared 2-core CPU)")

    records = list(ResultStore(out / "run").records())
    clean = clean_baselines(records)
    data = load_cell_data("cifar10", args.data_root, args.train_size, args.test_size)
    rows = []
    order = {method: i for i, method in enumerate(config.methods)}
    for record in sorted(records, key=lambda r: order.get(r["method"], len(order))):
        key = (record.get("poison") or {}).get("cache_key")
        path = out / "cache" / f"{key}.pt"
        norms = published_norms(Poison.load(path), data.x_train) if key and path.exists() else {}
        base = clean.get(record_setting(record))
        is_clean = record["method_spec"] == "clean"
        rows.append(
            {
                "method": record["method"],
                "threat": record.get("threat"),
                **norms,
                "separability": record.get("shortcut_separability"),
                "train≥90": first_epoch_above(record["history"]),
                "clean train≥90": first_epoch_above(base["history"]) if base else None,
                "mean train acc": mean_train_acc(record),
                "reading": "" if is_clean else shortcut_speed(record, base).split(": ")[-1],
                "final acc": record["final_acc"],
            }
        )
    table = pd.DataFrame(rows)
    for column in ("train≥90", "clean train≥90"):
        table[column] = [str(v) if v is not None else "never" for v in table[column]]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="-"))
    chance = 100.0 / data.num_classes
    print(f"separability: held-out %, chance {chance:.0f}%; train≥90: first epoch, or never")


if __name__ == "__main__":
    main()
