"""The local backend: run a grid's unfinished cells one after another in this process."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from uebench.errors import UebenchError
from uebench.grid.cell import run_cell
from uebench.grid.config import GridConfig
from uebench.grid.store import ResultStore
from uebench.grid.threads import choose_threads, torch_threads


def run_grid(config: GridConfig) -> pd.DataFrame:
    """Run every unfinished cell of the grid; return results.csv as a DataFrame."""
    if config.backend == "ray":
        from uebench.grid.ray_backend import run_grid_ray

        return run_grid_ray(config)
    if config.backend != "local":
        raise UebenchError(f"unknown backend {config.backend!r}; valid: local, ray")
    store = ResultStore(config.out)
    cells = config.cells(report=tqdm.write)
    todo = [cell for cell in cells if store.read(cell.cell_id) is None]
    if len(todo) < len(cells):
        tqdm.write(
            f"uebench: {len(cells) - len(todo)} of {len(cells)} cells already done in "
            f"{store.root}; running {len(todo)}"
        )
    threads, why = choose_threads(config.threads)
    if todo and config.progress:
        tqdm.write(
            f"uebench: {len(todo)} cell(s) under protocol {cells[0].protocol!r}; "
            f"torch threads: {why}"
        )
    with torch_threads(threads):
        for cell in tqdm(
            todo,
            desc="grid",
            unit="cell",
            disable=not config.progress or not todo,
            dynamic_ncols=True,
        ):
            model_path = (
                store.root / "models" / f"{cell.cell_id}.pt" if config.save_models else None
            )
            record = run_cell(cell, config.progress, model_path)
            record["threads"] = threads
            store.write(record)
            store.write_csv()
            if config.progress:
                tqdm.write(
                    f"uebench: {cell.name()}: {record['final_acc']:.1f}% "
                    f"({record['wall_time_s']:.0f} s)"
                )
    store.write_csv()
    table = store.table()
    ids = {cell.cell_id for cell in cells}
    return table[table["cell_id"].isin(ids)].reset_index(drop=True)
