"""The Python API: the same grid as ``uebench run``, from a notebook or a script.

    >>> import uebench
    >>> table = uebench.run(methods="clean,emin", archs="resnet18:width=16", epochs=5)

``table`` is the grid's results as a pandas DataFrame (the rows of ``results.csv``).  The API
and the command line read a spec the same way: :func:`load`'s default dataset is ``uebench
run``'s, and :func:`craft` applies the harness's options (``classes=``) as the runner does.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.grid import GridConfig, run_grid
from uebench.method import CraftContext
from uebench.poison import Poison
from uebench.scenarios import spec_poison
from uebench.training import TrainConfig, resolve_device


def run(**options: Any) -> pd.DataFrame:
    """Run a grid; keyword arguments are :class:`~uebench.grid.GridConfig` fields.

    List-valued fields accept lists or comma-separated strings (``methods="clean,emin"``).
    """
    return run_grid(GridConfig.from_dict(options))


def load(
    dataset: str = GridConfig.dataset,
    root: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
) -> ImageData:
    """Load a dataset by spec (``cifar10``, ``npz:file.npz``, ...), optionally subsetted.

    The default is ``uebench run``'s (``cluttered-digits``), and subsets are drawn with the
    runner's seed, so ``load(d, train_size=n)`` is the data a grid with ``--dataset d
    --train-size n`` trains on.
    """
    return load_dataset(dataset, root, train_size, test_size, seed=0)


def craft(
    method: str,
    data: ImageData,
    device: str = "auto",
    progress: bool = True,
    train: TrainConfig | None = None,
) -> Poison:
    """Craft a poison for ``data`` with a method spec (uncached); ``poison.apply`` uses it.

    The harness's own options apply as in a grid: ``random:classes=0,1`` leaves every image
    outside classes 0 and 1 clean (their ``rows`` are -1).  The spec is taken as written: a
    protocol's method options (what ``uebench run`` adds, e.g. the ``mini`` protocol's source
    model) are not added; write them into the spec (``uebench list protocols`` shows them).
    """
    ctx = CraftContext(resolve_device(device), train or TrainConfig(), progress)
    return spec_poison(method, ctx.craft(method, data), data)
