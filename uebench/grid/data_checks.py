"""A grid's methods and countermeasures checked against its data before the first cell.

Specs are checked when the grid is planned (:meth:`uebench.grid.config.GridConfig.cells`);
what only the data can tell (a file poison's images against the training set, a filter's
channel count) is checked here, once the data is loaded, so it fails in one line before any
crafting or training rather than after the cells that came first.
"""

from __future__ import annotations

from uebench.countermeasure import build_countermeasure
from uebench.data import ImageData
from uebench.errors import plugin_errors
from uebench.grid.cell import Cell, uncached_poisons
from uebench.registry import METHODS


def check_cells_against_data(cells: list[Cell], data: ImageData) -> None:
    """Call ``check_data(data)`` of every method (nested ones included) whose poison the cache
    does not hold yet (a cached one passed when it was crafted: its key covers the method and
    the data) and of every countermeasure of ``cells``, each once; a plugin's own exception
    becomes one line naming it."""
    methods = dict.fromkeys(spec for cell in cells for spec, _ in uncached_poisons(cell, data))
    for spec in methods:
        with plugin_errors(f"method {spec!r}", "checking it against the data"):
            method = METHODS.resolve(spec).without_common().build()
            check = getattr(method, "check_data", None)  # a plugin need not subclass Method
            if check is not None:
                check(data)
    for spec in dict.fromkeys(cell.defense for cell in cells):
        with plugin_errors(f"countermeasure {spec!r}", "checking it against the data"):
            countermeasure = build_countermeasure(spec)
            check = getattr(countermeasure, "check_data", None)
            if check is not None:
                check(data)
