"""``pytest -p uebench.regression``: the documented name of the reference-regression plugin.

The plugin lives in :mod:`uebench.results.regression`; this module re-exports its hooks, its
fixture and its helpers so that ``-p uebench.regression``, ``pytest_plugins =
["uebench.regression"]`` and ``from uebench.regression import reference_params`` keep working.
"""

from uebench.results.regression import (
    ReferenceChecker,
    grid_config,
    pytest_addoption,
    pytest_collect_file,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_unconfigure,
    reference_params,
    uebench_check,
)

__all__ = [
    "ReferenceChecker",
    "grid_config",
    "pytest_addoption",
    "pytest_collect_file",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_unconfigure",
    "reference_params",
    "uebench_check",
]
