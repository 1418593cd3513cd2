"""What :func:`uebench.bench` accepts, as a method spec the grid can run.

A spec string is taken as written.  Poisoned images (a uint8 tensor or array in the dataset's
order, NCHW or NHWC, or floats in [0, 1]) and a :class:`~uebench.poison.Poison` are stored
once as ``.npy`` under the results folder, named by their content's sha256, and benched as the
method ``file``: its checks (count, shape, order, budget) run on them, and the file's sha256
takes its place in every cell id and poison key, so two different poisons never share a
record and the same poison resumes.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.poison import Poison
from uebench.threat import ThreatModel


def method_spec(
    poison: str | Poison | torch.Tensor | np.ndarray,
    folder: Path,
    data: ImageData | None = None,
    eps: float | str | None = None,
    threat: str | None = None,
) -> tuple[str, str | None]:
    """The spec that benches ``poison`` and a label for its row (None: the spec itself).

    ``data`` (the bench's training set) is needed for a :class:`Poison`, whose noise is added
    to it; ``eps`` or ``threat`` (``l2:1.0``) declare the budget of poisoned images, checked
    on every image (a ``Poison`` carries its own)."""
    if isinstance(poison, str):
        if eps is not None or threat is not None:
            raise UebenchError("eps= and threat= are for images; write them into the spec")
        return poison, None
    if isinstance(poison, Poison):
        if eps is not None or threat is not None:
            raise UebenchError("a Poison carries its own threat model: leave out eps= and threat=")
        if data is None:
            raise UebenchError("benching a Poison needs the training images it applies to")
        images = poison.apply(data.x_train).numpy()
        declared = _declared(poison.threat)  # type: ignore[arg-type]
    elif isinstance(poison, (torch.Tensor, np.ndarray)):
        images = poison.detach().cpu().numpy() if isinstance(poison, torch.Tensor) else poison
        declared = _budget(eps, threat)
    else:
        raise UebenchError(
            f"bench takes a spec, poisoned images (tensor or array) or a Poison, not "
            f"{type(poison).__name__}"
        )
    path, digest = store_images(np.ascontiguousarray(images), folder)
    return f"file:path={path}{declared}", f"in-memory {digest[:12]}"


def store_images(images: np.ndarray, folder: Path) -> tuple[Path, str]:
    """``folder/<sha256>.npy`` holding ``images`` (written once, atomically), and the sha256."""
    if images.dtype == object:
        raise UebenchError("poisoned images must be numbers, not Python objects")
    buffer = io.BytesIO()
    np.save(buffer, images, allow_pickle=False)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path = folder / f"{digest[:32]}.npy"
    if not path.exists():
        atomic_write(path, lambda stream: stream.write(data))
    return path, digest


def _declared(model: ThreatModel) -> str:
    """``:eps=...`` or ``:threat=[l2:...]``: a Poison's threat model as the method ``file``
    checks it."""
    if model.norm == "linf":
        return f":eps={model.budget!r}"
    if model.norm == "unbounded":
        return ":threat=unbounded"
    return f":threat=[{model.norm}:{model.budget!r}]"


def _budget(eps: Any, threat: str | None) -> str:
    if eps is not None and threat is not None:
        raise UebenchError("give the images' budget as eps= or threat=, not both")
    if eps is not None:
        return f":eps={eps}"
    return f":threat=[{threat}]" if threat is not None else ""
