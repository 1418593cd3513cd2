"""The Python API: the same grid as ``uebench run``, from a notebook or a script.

    >>> import uebench
    >>> table = uebench.run(methods="clean,emin", archs="resnet18:width=16", epochs=5)

``table`` is the grid's results as a pandas DataFrame (the rows of ``results.csv``).  The API
and the command line read a spec the same way: :func:`load`'s default dataset is ``uebench
run``'s, and :func:`craft` applies the harness's options (``classes=``) as the runner does.
:func:`bench` is ``uebench bench``: a method, poisoned images or a :class:`Poison` scored
under a countermeasure suite beside the field's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from uebench.benchmark.inputs import method_spec
from uebench.benchmark.runner import (
    DEFAULT_DATASET,
    DEFAULT_PROTOCOL,
    DEFAULT_ROOT,
    bench_grid,
    run_bench,
)
from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.execution import execution_for
from uebench.grid import GridConfig, run_grid
from uebench.grid.cell import load_cell_data
from uebench.grid.protocols import resolve_protocol
from uebench.method import CraftContext
from uebench.poison import Poison
from uebench.scenarios import spec_poison
from uebench.scoring.suites import DEFAULT_SUITE, Suite, load_suite
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
    protocol: str | None = None,
) -> ImageData:
    """Load a dataset by spec (``cifar10``, ``npz:file.npz``, ...), optionally subsetted.

    The default is ``uebench run``'s (``cluttered-digits``), and subsets are drawn with the
    runner's seed.  Sizes not given are the protocol's (``protocol``, else the dataset's
    default), so ``load(d, train_size=n, protocol=p)`` is the data a grid with ``--dataset d
    --train-size n --protocol p`` trains on, in its order: ``load("cifar10", root,
    protocol="mini")`` is the 12000 training images of ``uebench bench`` on CIFAR-10.
    """
    settings = resolve_protocol(protocol, dataset)
    train_size = train_size if train_size is not None else settings.train_size
    test_size = test_size if test_size is not None else settings.test_size
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
    where = resolve_device(device)
    ctx = CraftContext(where, train or TrainConfig(), progress, execution=execution_for(where))
    return spec_poison(method, ctx.craft(method, data), data)


def bench(
    poison: str | Poison | torch.Tensor | np.ndarray,
    *,
    dataset: str = DEFAULT_DATASET,
    protocol: str | None = DEFAULT_PROTOCOL,
    seeds: Sequence[int] | int | str = (0,),
    suite: str | Path | Suite = DEFAULT_SUITE,
    out: str | Path | None = None,
    data_root: str | None = None,
    reference: str | Path | None = None,
    eps: float | str | None = None,
    threat: str | None = None,
    name: str | None = None,
    report: bool = True,
    **settings: Any,
) -> pd.DataFrame:
    """``uebench bench`` from Python: the bench table of a method spec (``"lsp"``), poisoned
    training images (uint8 N×C×H×W or N×H×W×C, in the order :func:`load` gives them with the
    same dataset, protocol and sizes) or a :class:`Poison` of that training set.

    Images need no file of the caller's: they are stored under ``out/inputs/`` by content and
    benched as the method ``file`` (its checks run; ``eps=8/255`` or ``threat="l2:1.0"``
    declares their budget); their sha256 is in every cell id.  ``settings`` are further
    :class:`~uebench.grid.GridConfig` fields (``threads``, ``progress``, ``epochs``, ...);
    ``report=False`` skips the report page.  Returns the table (one row per method and source;
    ``attrs`` holds ``findings``, ``notes``, ``suite``, ``suite_hash``, ``protocol_hash`` and
    ``files``); ``out/bench.md`` has it too.
    """
    chosen = load_suite(suite)
    data = None
    if isinstance(poison, Poison):
        # The exact training set a bench cell loads, so the noise lands where it will train.
        config = bench_grid("clean", chosen, dataset=dataset, protocol=protocol, **settings)
        sizes = config.effective_protocol()
        data = load_cell_data(dataset, data_root, sizes.train_size, sizes.test_size)
    folder = Path(out) if out is not None else DEFAULT_ROOT / "in-memory"
    spec, label = method_spec(poison, folder / "inputs", data, eps, threat)
    result = run_bench(
        spec,
        suite=chosen,
        reference=reference,
        label=name or label,
        report=report,
        dataset=dataset,
        protocol=protocol,
        seeds=seeds,
        out=out if out is not None else (folder if label is not None else None),
        data_root=data_root,
        **settings,
    )
    frame = result.table.frame.copy()
    frame.attrs.update(
        findings=result.table.findings,
        notes=result.table.notes,
        suite=chosen.id,
        suite_hash=chosen.content_hash(),
        protocol_hash=result.table.protocol.content_hash(),
        files=[str(path) for path in result.files],
    )
    return frame
