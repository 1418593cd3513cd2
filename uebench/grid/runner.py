"""The ``local`` backend (:mod:`uebench.grid.backends`): run a grid's unfinished cells one after
another in this process.

Each cell is claimed in the :class:`~uebench.grid.store.ResultStore` before it runs, so several
``uebench run`` processes on one ``--out`` share the work instead of repeating it.  A cell
another live process has claimed is skipped at first; once this process has run every cell it
could, it waits for those (reporting them as running elsewhere), polling every
:data:`WAIT_POLL_S`, and runs any whose claimant died or gave up without a record.  So each
process ends with the whole grid's table, as if it had run alone.
"""

from __future__ import annotations

import socket
import sys
import time
from collections import Counter

import pandas as pd
from tqdm.auto import tqdm

from uebench.errors import UebenchError
from uebench.grid.cell import Cell, run_cell
from uebench.grid.config import GridConfig
from uebench.grid.estimate import announce_grid
from uebench.grid.outcome import grid_table, lost_records, vanished
from uebench.grid.store import ResultStore
from uebench.grid.threads import choose_threads, threads_warning, torch_threads
from uebench.wording import counted

#: Seconds between checks on cells another process is running.
WAIT_POLL_S = 2.0


def run_local(config: GridConfig) -> pd.DataFrame:
    """The ``local`` backend: run every unfinished cell of the grid in this process; return
    the grid's rows of results.csv."""
    cells = config.cells(report=tqdm.write)
    config.check_folders()  # a file in the way fails here, not after the first cell
    store = ResultStore(config.out)
    todo = [cell for cell in cells if store.read(cell.cell_id) is None]
    if len(todo) < len(cells):
        tqdm.write(
            f"uebench: {len(cells) - len(todo)} of {len(cells)} cells already done in "
            f"{store.root}; running {len(todo)}"
        )
    threads, why = choose_threads(config.threads)
    warning = threads_warning(config.threads)
    if todo and warning:
        _warn(warning)
    if todo:  # the protocol and the estimate, also under --no-progress
        with torch_threads(threads):
            announce_grid(config, todo, threads, tqdm.write, _warn)
        if config.progress:
            tqdm.write(f"uebench: torch threads: {why}")
    if todo:  # the table so far, to which each finished cell appends its row
        store.write_csv()
    bar = tqdm(
        total=len(todo),
        desc="grid",
        unit="cell",
        disable=not config.progress or not todo,
        dynamic_ncols=True,
    )
    try:
        with torch_threads(threads):
            _run_all(todo, store, config, threads, bar)
            lost = lost_records(store, cells)
            if lost:  # every cell has finished by now: a missing record was removed
                tqdm.write(
                    f"uebench: warning: {vanished(store, lost, len(cells))}; recomputing them",
                    file=sys.stderr,
                )
                bar.total += len(lost)
                _run_all(lost, store, config, threads, bar)
                lost = lost_records(store, cells)
                if lost:
                    raise UebenchError(
                        f"{vanished(store, lost, len(cells))}, again after recomputing them; "
                        f"nothing in {store.root} can be trusted while something removes its files"
                    )
    finally:
        bar.close()
        store.release_all()
    store.write_csv()
    return grid_table(store, cells)


def _run_all(
    cells: list[Cell], store: ResultStore, config: GridConfig, threads: int, bar: tqdm
) -> None:
    """Run every cell of ``cells`` without a record, waiting for those another process holds
    (and running any its claimant gives up)."""
    waiting = _run_claimable(cells, store, config, threads, bar)
    if waiting:
        tqdm.write(
            f"uebench: {counted(len(waiting), 'cell')} running elsewhere{_holders(store, waiting)}"
            "; waiting for them (Ctrl-C stops waiting; their records still arrive)"
        )
    while waiting:
        time.sleep(WAIT_POLL_S)
        waiting = _run_claimable(waiting, store, config, threads, bar)


def _run_claimable(
    cells: list[Cell], store: ResultStore, config: GridConfig, threads: int, bar: tqdm
) -> list[Cell]:
    """Run each cell without a record that this process can claim; return those claimed by
    other live processes (cells finished elsewhere meanwhile are neither)."""
    elsewhere = []
    for cell in cells:
        if store.read(cell.cell_id) is not None:  # finished by another process meanwhile
            bar.update()
            continue
        if not store.claim(cell.cell_id):
            elsewhere.append(cell)
            continue
        try:
            # The record may have landed between the read above and the claim.
            if store.read(cell.cell_id) is None:
                _run_one(cell, store, config, threads)
        finally:
            store.release(cell.cell_id)
        bar.update()
    return elsewhere


def _run_one(cell: Cell, store: ResultStore, config: GridConfig, threads: int) -> None:
    model_path = store.root / "models" / f"{cell.cell_id}.pt" if config.save_models else None
    record = run_cell(cell, config.progress, model_path)
    record.update(threads=threads, backend="local", node=socket.gethostname())
    store.add(record)
    if config.progress:
        tqdm.write(
            f"uebench: {cell.name()}: {record['final_acc']:.1f}% ({record['wall_time_s']:.0f} s)"
        )


def _warn(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def _holders(store: ResultStore, cells: list[Cell]) -> str:
    """`` (pid 123 on host-a)`` (or several), for the waiting message; empty when the claims
    are gone already."""
    holders: Counter[str] = Counter()
    for cell in cells:
        holder = store.claimant(cell.cell_id)
        if holder is not None:
            holders[f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"] += 1
    return f" ({', '.join(holders)})" if holders else ""
