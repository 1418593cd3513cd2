"""Where a grid's cells run: the registry of backends, each one function over one interface.

A backend takes a :class:`~uebench.grid.config.GridConfig`, runs every cell of it that has no
record yet, and returns the grid's rows of results.csv (ending in
:class:`~uebench.grid.outcome.CellsFailed` when cells raised).  ``local`` runs them one after
another in this process (:mod:`uebench.grid.runner`); ``ray`` runs them as Ray tasks
(:mod:`uebench.grid.ray_backend`, which imports Ray only when it runs).  The config's
``backend`` names the one :func:`run_grid` calls.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from uebench.errors import UebenchError
from uebench.grid.config import GridConfig
from uebench.grid.ray_backend import run_grid_ray
from uebench.grid.runner import run_local

#: What a backend is: run the grid's unfinished cells, return the grid's rows of results.csv.
Backend = Callable[[GridConfig], pd.DataFrame]

#: Every backend by the name ``--backend`` takes.
BACKENDS: dict[str, Backend] = {"local": run_local, "ray": run_grid_ray}


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; an unknown name is a one-line error listing them."""
    if name not in BACKENDS:
        raise UebenchError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def run_grid(config: GridConfig) -> pd.DataFrame:
    """Run every unfinished cell of the grid on its backend; return results.csv as a DataFrame."""
    return get_backend(config.backend)(config)
