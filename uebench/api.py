"""The Python API: the same grid as ``uebench run``, from a notebook or a script.

    >>> import uebench
    >>> table = uebench.run(methods="clean,emin", archs="resnet18:width=16", epochs=5)

``table`` is the grid's results as a pandas DataFrame (the rows of ``results.csv``).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from uebench.data import ImageData
from uebench.grid import GridConfig, run_grid
from uebench.method import CraftContext
from uebench.poison import Poison
from uebench.registry import METHODS
from uebench.training import TrainConfig, resolve_device


def run(**options: Any) -> pd.DataFrame:
    """Run a grid; keyword arguments are :class:`~uebench.runner.GridConfig` fields.

    List-valued fields accept lists or comma-separated strings (``methods="clean,emin"``).
    """
    return run_grid(GridConfig.from_dict(options))


def load(
    dataset: str = "digits",
    root: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
) -> ImageData:
    """Load a dataset by spec (``cifar10``, ``npz:file.npz``, ...), optionally subsetted."""
    from uebench.datasets import load_dataset

    return load_dataset(dataset, root, train_size, test_size)


def craft(
    method: str,
    data: ImageData,
    device: str = "auto",
    progress: bool = True,
    train: TrainConfig | None = None,
) -> Poison:
    """Craft a poison for ``data`` with a method spec (uncached); ``poison.apply`` uses it."""
    ctx = CraftContext(resolve_device(device), train or TrainConfig(), progress)
    return METHODS.build(method).craft(data, ctx)
