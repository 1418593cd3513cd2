"""uebench: benchmark unlearnable examples (availability poisoning) against countermeasures."""

from uebench.api import craft, load, run
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.poison import Poison
from uebench.registry import ARCHS, DATASETS, DEFENSES, METHODS
from uebench.version import __version__

__all__ = [
    "ARCHS",
    "DATASETS",
    "DEFENSES",
    "METHODS",
    "ImageData",
    "Poison",
    "UebenchError",
    "__version__",
    "craft",
    "load",
    "run",
]
