"""How a grid run ends, whichever backend ran it: its rows of results.csv, the one line that
reports a failed cell, :class:`CellsFailed` when cells raised, and the check that no finished
cell's record vanished while the grid ran.

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
    """The rows of results.csv that belong to ``cells``, labelled as this grid names its
    methods and countermeasures (a record's own label, perhaps edited by hand or written under
    another spelling of the same cell, never reaches the run's table)."""
    table = store.table()
    by_id = {cell.cell_id: cell for cell in cells}
    table = table[table["cell_id"].isin(by_id)].reset_index(drop=True)
    mine = [by_id[cell_id] for cell_id in table["cell_id"]]
    table["method"] = [cell.method_label or cell.method for cell in mine]
    table["defense"] = [cell.defense_label or cell.defense for cell in mine]
    return table


def lost_records(store: ResultStore, finished: list[Cell]) -> list[Cell]:
    """The cells of ``finished`` (each done before the run or during it) whose record is gone
    or unreadable now: a results folder deleted mid-run is recreated by the next write, and
    the cells finished before it would otherwise drop out of the table without a word."""
    return [cell for cell in finished if store.read(cell.cell_id) is None]


def vanished(store: ResultStore, lost: list[Cell], total: int) -> str:
    """The line that says finished records vanished during the run."""
    return (
        f"{len(lost)} of the grid's {total} finished cells lost their record in {store.cells} "
        "while the grid ran (the folder or its files deleted?)"
    )
