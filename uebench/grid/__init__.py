"""Grids of cells: configuration, one cell's run, the result store and the backends.

A grid (:class:`GridConfig`) expands to cells (:class:`Cell`: dataset × method × countermeasure ×
architecture × seed under one protocol).  Each cell is a self-contained unit of work with a
content-hashed id; a backend (:data:`BACKENDS`: ``local``, ``ray``) runs the cells that have no
record yet, and the :class:`ResultStore` keeps one JSON record per finished cell plus the derived
``results.csv``.  A run whose cells raised ends in :class:`CellsFailed`.
"""

from uebench.grid.backends import BACKENDS, run_grid
from uebench.grid.cell import Cell, run_cell
from uebench.grid.config import GridConfig
from uebench.grid.outcome import CellsFailed
from uebench.grid.store import ResultStore
from uebench.grid.summary import summary
from uebench.options import parse_seeds

__all__ = [
    "BACKENDS",
    "Cell",
    "CellsFailed",
    "GridConfig",
    "ResultStore",
    "parse_seeds",
    "run_cell",
    "run_grid",
    "summary",
]
