"""The table a user reads at the end of a run."""

from __future__ import annotations

import pandas as pd


def summary(table: pd.DataFrame) -> str:
    """Clean test accuracy (final epoch, mean over seeds): methods × (defense, arch)."""
    if table.empty:
        return "(no results)"
    pivot = table.pivot_table(
        index="method", columns=["defense", "arch"], values="final_acc", aggfunc="mean", sort=False
    )
    return pivot.round(2).to_string()
