"""uebench: benchmark unlearnable examples (availability poisoning) against countermeasures.

This package's own modules are the contracts plugins are written against and the core they
stand on: the spec grammar (``spec``) and option conversion (``options``), plugin registries
(``registry``), the flags plugins declare (``plugin_flags``), identities and keys
(``identity``, ``version``), plugins named at run time (``plugin_loader``), data and the
built-in datasets, threat models, poisons and the ``classes=`` scenario, the method and
countermeasure contracts, training and crafting, how models run (``execution``,
``precision``), safe file writes (``files``), errors, and the Python API (``api``:
:func:`run`, :func:`load`, :func:`craft`, :func:`bench`).  The features built on them live in
folders named by their job: ``storage/`` (the poison cache, cell records, poison and numpy
files), ``analysis/`` (the clean baseline, diagnostics, certification), ``archs/``, ``grid/``
(grids of cells and their backends), ``results/`` (records into tables, checks and pictures),
``benchmark/`` (``uebench bench``) and ``cli/``; the built-in methods and countermeasures are
installed as ``uebench.methods`` and ``uebench.attacks_defenses``.
"""

from uebench.analysis.certify import Certificate, certify_model
from uebench.api import bench, craft, load, run
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.poison import Poison, Surrogate
from uebench.registry import ARCHS, COUNTERMEASURES, DATASETS, DEFENSES, METHODS
from uebench.results.references import Reference, load_references
from uebench.results.report import write_report
from uebench.version import __version__

__all__ = [
    "ARCHS",
    "COUNTERMEASURES",
    "DATASETS",
    "DEFENSES",
    "METHODS",
    "Certificate",
    "ImageData",
    "Poison",
    "Reference",
    "Surrogate",
    "UebenchError",
    "__version__",
    "bench",
    "certify_model",
    "craft",
    "load",
    "load_references",
    "run",
    "write_report",
]
