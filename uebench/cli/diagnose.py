"""``uebench diagnose RUN_DIR``: a cell's diagnostics as text — learning curves (training and
clean test accuracy), shortcut separability and learning speed against the clean row,
per-class accuracy, confusion matrix, backdoor success and what its countermeasure recorded."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from uebench.analysis.diagnostics import clean_baselines, record_setting, shortcut_speed
from uebench.errors import UebenchError
from uebench.grid.store import ResultStore

# Bulky notes a terminal reader does not want in full.
_LONG_NOTES = {"poisoned_indices", "clean_part_history"}


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "diagnose", help="per-cell learning curve, per-class accuracy, confusion, backdoor rate"
    )
    parser.add_argument("run_dir", help="a results folder written by `uebench run`")
    parser.add_argument("--cell", help="only cells whose id starts with this")
    parser.add_argument("--method", help="only cells of this method spec")
    parser.add_argument("--defense", help="only cells of this countermeasure spec")
    parser.set_defaults(handler=_diagnose)


def select_records(
    run_dir: str | Path,
    cell: str | None = None,
    method: str | None = None,
    defense: str | None = None,
) -> list[dict[str, Any]]:
    """The finished cells of ``run_dir`` that match every given filter."""
    store = ResultStore(run_dir)
    if not store.cells.is_dir():
        raise UebenchError(f"{run_dir} holds no results (no cells/ folder); run `uebench run`")
    records = [
        r
        for r in store.records(unreadable="skipped here; `uebench run` recomputes it")
        if (cell is None or r["cell_id"].startswith(cell))
        and (method is None or r["method"] == method)
        and (defense is None or r["defense"] == defense)
    ]
    if not records:
        raise UebenchError(f"no finished cell in {run_dir} matches the filters")
    return records


def describe(record: dict[str, Any], clean: dict[str, Any] | None = None) -> str:
    """One cell's diagnostics as a block of text; ``clean`` is the clean row of its setting
    (for the shortcut-speed reading), when the run has one."""
    lines = [
        f"cell {record['cell_id']}: {record['dataset']} · {record['method']} · "
        f"{record['defense']} · {record['arch']} · seed {record['seed']}",
        f"  clean test accuracy: final {record['final_acc']:.2f}, peak {record['best_acc']:.2f} "
        f"(epoch {record['best_epoch']}), selected {record['selected_acc']:.2f} "
        f"(epoch {record['selected_epoch']})",
    ]
    if record.get("trained_acc") is not None and record["trained_acc"] != record["final_acc"]:
        lines.append(
            f"  before the countermeasure's after-training step: {record['trained_acc']:.2f}"
        )
    if record.get("backdoor_success") is not None:
        lines.append(
            f"  backdoor success (class noise as trigger): {record['backdoor_success']:.2f}%"
        )
    curve = " ".join(f"{h['test_acc']:.0f}" for h in record["history"])
    lines.append(f"  learning curve (test acc per epoch): {curve}")
    trained = " ".join(
        "-" if h.get("train_acc") is None else f"{h['train_acc']:.0f}" for h in record["history"]
    )
    lines.append(f"  training accuracy per epoch:        {trained}")
    separability = record.get("shortcut_separability")
    if separability is not None:
        chance = 100.0 / max(int(record.get("num_classes") or 1), 1)
        lines.append(
            f"  shortcut separability: {separability:.1f}% (a linear classifier on the applied "
            f"perturbations alone, held out; chance {chance:.0f}%)"
        )
    if str(record.get("method_spec", record["method"])) != "clean":
        lines.append(f"  shortcut speed: {shortcut_speed(record, clean)}")
    notes = {
        k: v for k, v in record.get("countermeasure_notes", {}).items() if k not in _LONG_NOTES
    }
    if notes:
        lines.append("  countermeasure: " + ", ".join(f"{k}={_short(v)}" for k, v in notes.items()))
    classes = record["classes"]
    per_class = pd.Series(record["per_class_acc"], index=classes, name="acc %", dtype=float)
    lines.append(
        "  per-class accuracy:  "
        + "  ".join(f"{name} {value:.0f}" for name, value in per_class.items())
    )
    confusion = pd.DataFrame(record["confusion_matrix"], index=classes, columns=classes)
    confusion.index.name = "true \\ predicted"
    lines.append("  confusion matrix:")
    lines.extend("    " + row for row in confusion.to_string().splitlines())
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _diagnose(args: argparse.Namespace) -> None:
    records = select_records(args.run_dir, args.cell, args.method, args.defense)
    # The clean rows come from the whole run, whatever the filters keep.
    baselines = clean_baselines(select_records(args.run_dir))
    print("\n\n".join(_describe_checked(r, baselines.get(record_setting(r))) for r in records))


def _describe_checked(record: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """:func:`describe`, or one line naming the record when a field it shows is malformed
    (the store checks the fields every reader needs, not each diagnostic)."""
    try:
        return describe(record, baseline)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        what = f"no {error.args[0]!r}" if isinstance(error, KeyError) else f"{error}".split("\n")[0]
        raise UebenchError(
            f"record of cell {record.get('cell_id')} is malformed ({what}); delete "
            "it and rerun `uebench run` to recompute it"
        ) from None
