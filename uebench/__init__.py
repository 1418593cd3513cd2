"""uebench: benchmark unlearnable examples (availability poisoning) against countermeasures.

This package's own modules are the core every folder builds on: the spec grammar (``spec``) and
option conversion (``options``), plugin registries (``registry``) and identities
(``identity``), data, threat models, poisons and their cache, the method and countermeasure
contracts, training and crafting, file handling (``files``), certification and the Python API
(``api``: :func:`run`, :func:`load`, :func:`craft`, :func:`bench`).  ``grid/`` runs grids of
cells, ``results/`` turns their records into tables, checks and pictures, ``benchmark/`` scores
a method under a countermeasure suite beside the field's rows (``uebench bench``), ``cli/`` is
the command line; the built-in methods and countermeasures are installed as ``uebench.methods``
and ``uebench.attacks_defenses``.
"""

from uebench.api import bench, craft, load, run
from uebench.certify import Certificate, certify_model
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
