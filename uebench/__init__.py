"""uebench: benchmark unlearnable examples (availability poisoning) against countermeasures."""

from uebench.api import craft, load, run
from uebench.certify import Certificate, certify_model
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.poison import Poison, Surrogate
from uebench.registry import ARCHS, DATASETS, DEFENSES, METHODS
from uebench.results.references import Reference, load_references
from uebench.results.report import write_report
from uebench.version import __version__

__all__ = [
    "ARCHS",
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
    "certify_model",
    "craft",
    "load",
    "load_references",
    "run",
    "write_report",
]
