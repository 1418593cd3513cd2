"""How a grid run ends, whichever backend ran it: its rows of results.csv, the one line that
reports a failed cell, and :class:`CellsFailed` when cells raised.

Both backends (:mod:`uebench.grid.runner`, :mod:`uebench.grid.ray_backend`) use these, so they
live below both.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from uebench.errors import UebenchError
from uebench.grid.cell import Cell
from uebench.grid.store import ResultStore


class CellsFailed(UebenchError):
    """Cells of a grid raised; every other cell's record (and results.csv) was written first.

    Any backend that goes on past a failing cell ends with this, so the exit status says so.
    """

    def __init__(self, failed: list[str], total: int, out: str | Path | None = None) -> None:
        self.failed = failed
        self.total = total
        shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
        # The success path prints where the results are; a failed grid has results too.
        where = (
            f"; the other cells' records are in {Path(out) / 'cells'}, the table in "
            f"{Path(out) / 'results.csv'}"
            if out is not None
            else ""
        )
        super().__init__(
            f"{len(failed)} of {total} cells failed (reported above; rerun to retry them): "
            f"{shown}{where}"
        )


def failure_line(cell: Cell, reason: str) -> str:
    """The one line that reports a failed cell: its name, its full specs and why."""
    return (
        f"uebench: cell failed: {cell.name()} [dataset={cell.dataset} method={cell.method} "
        f"defense={cell.defense} arch={cell.arch} seed={cell.seed} id={cell.cell_id}]: {reason}"
    )


def grid_table(store: ResultStore, cells: list[Cell]) -> pd.DataFrame:
    """The rows of results.csv that belong to ``cells``."""
    table = store.table()
    ids = {cell.cell_id for cell in cells}
    return table[table["cell_id"].isin(ids)].reset_index(drop=True)
