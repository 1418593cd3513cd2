"""The table a user reads at the end of a run: method × countermeasure, chance and clean marked."""

from __future__ import annotations

import pandas as pd

from uebench.analysis.baseline import (
    chance_level,
    near_chance,
    near_chance_warning,
    stated_num_classes,
)
from uebench.wording import counted


def summary(table: pd.DataFrame) -> str:
    """Clean test accuracy (final epoch, mean over seeds): methods × countermeasures.

    Columns are countermeasures (with the architecture too when the grid has several); the
    ``clean`` row is marked as the baseline, chance is stated, and a countermeasure under which
    even clean training stayed near chance is flagged
    (:func:`uebench.analysis.baseline.near_chance`, the test the leaderboard, the report and
    ``uebench compare`` apply too): its column says nothing about the noise.
    """
    if table.empty:
        return "(no results)"
    several_archs = table["arch"].nunique() > 1
    columns = ["defense", "arch"] if several_archs else ["defense"]
    pivot = table.pivot_table(
        index="method", columns=columns, values="final_acc", aggfunc="mean", sort=False
    )
    seeds = table.groupby(["method", *columns])["seed"].nunique().max()
    # The grid's class count K: the first row that states one (records may predate it).
    num_classes = next(filter(None, map(stated_num_classes, table.to_dict("records"))), None)
    chance = chance_level(num_classes)
    lines = [
        f"clean test accuracy (%), final epoch, mean over {counted(int(seeds), 'seed')}"
        + (f"; chance is {chance:.1f}%" if chance is not None else "")
    ]
    shown = pivot.round(1)
    shown.index = [f"{name} (baseline)" if name == "clean" else name for name in shown.index]
    lines.append(shown.to_string())
    if num_classes is not None and "clean" in pivot.index:
        for column, value in pivot.loc["clean"].items():
            if near_chance(value, num_classes):
                where = "/".join(column) if isinstance(column, tuple) else column
                lines.append(f"warning: {near_chance_warning(value, num_classes, where)}")
    return "\n".join(lines)
