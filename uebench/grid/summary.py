"""The table a user reads at the end of a run: method × countermeasure, chance and clean marked."""

from __future__ import annotations

import pandas as pd

#: A clean row closer than this to chance (points) has not learned enough to judge noise by.
BASELINE_MARGIN = 10.0


def summary(table: pd.DataFrame) -> str:
    """Clean test accuracy (final epoch, mean over seeds): methods × countermeasures.

    Columns are countermeasures (with the architecture too when the grid has several); the
    ``clean`` row is marked as the baseline, chance is stated, and a countermeasure under which
    even clean training stayed near chance is flagged: its column says nothing about the noise.
    """
    if table.empty:
        return "(no results)"
    several_archs = table["arch"].nunique() > 1
    columns = ["defense", "arch"] if several_archs else ["defense"]
    pivot = table.pivot_table(
        index="method", columns=columns, values="final_acc", aggfunc="mean", sort=False
    )
    seeds = table.groupby(["method", *columns])["seed"].nunique().max()
    chance = _chance(table)
    lines = [
        f"clean test accuracy (%), final epoch, mean over {seeds} seed(s)"
        + (f"; chance is {chance:.1f}%" if chance is not None else "")
    ]
    shown = pivot.round(1)
    shown.index = [f"{name} (baseline)" if name == "clean" else name for name in shown.index]
    lines.append(shown.to_string())
    if chance is not None and "clean" in pivot.index:
        for column, value in pivot.loc["clean"].items():
            if value == value and value < chance + BASELINE_MARGIN:
                where = "/".join(column) if isinstance(column, tuple) else column
                lines.append(
                    f"warning: clean training reached only {value:.1f}% under {where} "
                    f"(chance {chance:.1f}%): that column cannot show what the noise does"
                )
    return "\n".join(lines)


def _chance(table: pd.DataFrame) -> float | None:
    """100/K for the grid's K classes (None for records that predate ``num_classes``)."""
    if "num_classes" not in table or table["num_classes"].isna().all():
        return None
    return 100.0 / float(table["num_classes"].dropna().iloc[0])
