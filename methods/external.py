"""A poison made elsewhere, evaluated like a crafted one: the method ``file``.

``file:poisoned.npz`` reads the poisoned training images (uint8, or float in [0, 1]; NHWC or
NCHW) or the perturbations ([0, 1] units) from a file
(:mod:`uebench.storage.poison_files`: ``.npz``, ``.npy``, ``.pt`` read weights-only, or an
ImageFolder tree of PNG/JPEG images) and turns them
into a :class:`~uebench.poison.Poison` against the dataset the grid loads, in dataset order:
each changed image's noise row is exactly the change it publishes, so the victim trains on the
file's own images.  Count, shape, classes, labels and order (every image of the file must be
nearer its own clean image than any other it is compared with) are checked first, and a
declared budget (``eps=8/255`` or ``threat=[l2:1.0]``) on every image; the measured L∞, L2 and
L0 sizes are recorded either way.  The file's sha256 replaces its path in the method's identity
(:meth:`ExternalPoison.identity_options`), so the cell id and poison key follow the content:
an edited file means new cells, a moved one the same; the poison names the sha256 of the very
bytes it was made from, so a file replaced after the grid was planned is refused, not run under
the old file's cell ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method, check_eps
from uebench.poison import Poison
from uebench.spec import parse_float
from uebench.storage.poison_files import (
    PoisonFile,
    change_norms,
    check_readable,
    file_sha256,
    published_sha256,
    read_poison_file,
)
from uebench.threat import NORMS, ThreatModel

#: How many other clean images each of the file's images is compared with (the next, the
#: previous and seeded random ones): a swapped image is nearer its stand-in than its own clean
#: image about half the time each, so it passes all of them with a chance of about 2⁻⁸.
ORDER_COMPARISONS = 8
_CHUNK = 4096
#: 1/this of the pixels make the partial sums that settle most comparisons of
#: :func:`_check_order` early.
_PREFIX_SHARE = 4


def _check_path(path: str) -> str:
    """``path``, refused when empty (``file:`` or ``file:path=``): the file's identity is read
    before the method is built, and an empty path would read the current folder as a poison."""
    if not path.strip():
        raise UebenchError("method 'file' needs option 'path': write file:PATH (e.g. file:x.npz)")
    return path


class ExternalPoison(Method):
    """A poison made elsewhere: poisoned images or noise from .npz/.npy/.pt or a PNG folder."""

    def __init__(
        self,
        *,
        path: str,
        eps: float | None = None,
        threat: str | None = None,
        content: Literal["auto", "images", "delta"] = "auto",
        key: str | None = None,
    ) -> None:
        _check_path(path)
        if eps is not None and threat is not None:
            raise UebenchError("file: give the budget as eps= or threat=, not both")
        self.path = path
        self.eps = check_eps(eps) if eps is not None else None
        self.threat = threat
        self.content = content
        self.key = key
        self._declared = (
            ThreatModel.linf(self.eps) if self.eps is not None else parse_threat(threat)
        )
        self.format = check_readable(self._file())
        # The hash its cache key was computed from (built right after the key): the bytes
        # craft() reads must be these, or the cache would store another file's poison.
        self._sha256 = file_sha256(self._file())

    def _file(self) -> Path:
        return Path(self.path).expanduser()

    @staticmethod
    def identity_options(options: dict[str, Any]) -> dict[str, Any]:
        """The method's options for cell ids and poison keys: the file's sha256 in place of its
        path (content, not location, decides the result)."""
        identity = {k: v for k, v in options.items() if k != "path"}
        identity["sha256"] = file_sha256(_check_path(options["path"]))
        return identity

    def threat_model(self) -> ThreatModel | None:
        """The declared budget (``eps=`` or ``threat=``); None when the file declares none."""
        return self._declared

    def options(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def check_data(self, data: ImageData) -> None:
        """Every check crafting makes (count, shape, labels, order, range, budget): reading
        the file is all crafting does, so a grid runs it once before its first cell."""
        self.published_poison(data)

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        return self.published_poison(data)

    def published_poison(self, data: ImageData) -> Poison:
        """The file's poison on ``data``'s training images, checked; one line on any fault."""
        file = self._file()
        read = read_poison_file(file, self.key)
        where = f"poison file {file}"
        if read.sha256 != self._sha256:
            raise UebenchError(
                f"{where} changed while it was being read (sha256 {self._sha256[:12]} when "
                f"planned, {read.sha256[:12]} as read); rerun once it stays put"
            )
        if len(read.array) != len(data.y_train):
            raise UebenchError(
                f"{where} has {len(read.array)} images, the training set the grid loads has "
                f"{len(data.y_train)} (same --dataset and --train-size as the file was made for?)"
            )
        _check_labels(read, data, where)
        array = _as_nchw(read, data, where)
        content = self.content if self.content != "auto" else _content_of(read, array)
        clean = data.x_train
        if content == "images":
            published = _to_uint8(array, where)
            _check_order(published, clean, where)
        else:
            published = _apply_delta(array, clean, where)
        change = published.to(torch.int16) - clean.to(torch.int16)
        changed = change.flatten(1).ne(0).any(1)
        norms = change_norms(change[changed])
        threat = self._declared or ThreatModel.unbounded()
        _check_budget(threat, change, changed, where)
        rows = torch.full((len(clean),), -1, dtype=torch.long)
        rows[changed] = torch.arange(int(changed.sum()))
        meta = {
            "form": "sample",
            "source": "file",
            "file_sha256": read.sha256,
            "file_format": read.format,
            "file_content": content,
            "declared": self._declared.describe() if self._declared else "undeclared",
            "norms": norms,
            "published_sha256": published_sha256(published, data.y_train),
        }
        poison = Poison(change[changed].float() / 255.0, rows, threat, meta)
        if not torch.equal(poison.apply(clean), published):  # the rounding must give them back
            raise UebenchError(
                f"{where}: its images cannot be reproduced within {threat.describe()}"
            )
        return poison


def parse_threat(text: str | None) -> ThreatModel | None:
    """``linf:8/255``, ``l2:1.0``, ``l0:1`` or ``unbounded`` (None stays undeclared)."""
    if text is None:
        return None
    norm, _, budget = text.replace("=", ":").partition(":")
    norm = norm.strip().lower().replace("∞", "inf")
    if norm not in NORMS:
        raise UebenchError(f"file: threat {text!r}: norm must be one of {', '.join(NORMS)}")
    if norm == "unbounded":
        return ThreatModel.unbounded()
    if not budget:
        raise UebenchError(f"file: threat {text!r} needs a budget, e.g. threat=[{norm}:1.0]")
    return ThreatModel(norm, parse_float(budget))  # type: ignore[arg-type]


def _as_nchw(read: PoisonFile, data: ImageData, where: str) -> np.ndarray:
    """The array as N×C×H×W, told apart from N×H×W×C by the dataset's image shape."""
    array = read.array
    channels, height, width = data.image_shape
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    if array.ndim != 4:
        raise UebenchError(
            f"{where} holds an array of shape {array.shape}; expected N×C×H×W or N×H×W×C images"
        )
    if array.shape[1:] == (channels, height, width):
        return array
    if array.shape[1:] == (height, width, channels):
        return array.transpose(0, 3, 1, 2)
    raise UebenchError(
        f"{where}: images of shape {array.shape[1:]} fit neither C×H×W nor H×W×C of the "
        f"dataset's {channels}×{height}×{width} images"
    )


def _content_of(read: PoisonFile, array: np.ndarray) -> str:
    """Images or perturbations: a key or folder says; else uint8 or values in [0, 1] are
    images (the order check catches a perturbation taken for images) and signed ones noise."""
    if read.content != "auto":
        return read.content
    if array.dtype == np.uint8 or array.dtype.kind != "f":
        return "images"
    return "delta" if bool(np.nanmin(array) < 0) else "images"


def _to_uint8(array: np.ndarray, where: str) -> torch.Tensor:
    """Images as published uint8: 8-bit as stored, floats in [0, 1] rounded to 8 bits."""
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if array.dtype.kind not in "fiu":
        raise UebenchError(f"{where}: images must be numbers, got {array.dtype}")
    values = torch.from_numpy(np.ascontiguousarray(array)).double()
    _check_finite(values, where)
    if array.dtype.kind in "iu":
        if values.min() < 0 or values.max() > 255:
            raise UebenchError(f"{where}: integer images must be in 0..255")
        return values.to(torch.uint8)
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 1:
        hint = " (0..255 floats? divide by 255, or store uint8)" if high > 1 else ""
        raise UebenchError(
            f"{where}: float images must be in [0, 1], found [{low:.4g}, {high:.4g}]{hint}"
        )
    return (values * 255.0).round().to(torch.uint8)


def _apply_delta(array: np.ndarray, clean: torch.Tensor, where: str) -> torch.Tensor:
    """Perturbations in [0, 1] units added to the clean images, clipped and rounded to 8 bits,
    as uebench publishes every poison."""
    if array.dtype.kind != "f":
        raise UebenchError(f"{where}: perturbations must be floats in [0, 1] units")
    delta = torch.from_numpy(np.ascontiguousarray(array)).float()
    _check_finite(delta, where)
    if float(delta.abs().max()) > 1:
        raise UebenchError(
            f"{where}: perturbations beyond ±1; give them in [0, 1] image units (divide by 255)"
        )
    return (clean.float() + delta * 255.0).round().clamp(0, 255).to(torch.uint8)


def _check_finite(values: torch.Tensor, where: str) -> None:
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        index = int(torch.nonzero(bad.flatten(1).any(1))[0])
        raise UebenchError(f"{where}: NaN or infinite values (first in image {index})")


def _check_labels(read: PoisonFile, data: ImageData, where: str) -> None:
    """The file's labels, or its class folders, must be the dataset's, in dataset order."""
    if read.classes is not None:
        unknown = [name for name in read.classes if name not in data.classes]
        if unknown:
            raise UebenchError(
                f"{where}: class folder(s) {', '.join(unknown[:5])} are not classes of "
                f"{data.name} ({', '.join(data.classes[:10])})"
            )
        # Folder order is by name; the dataset's own labels order the classes.
        mapping = np.array([data.classes.index(name) for name in read.classes])
        labels = mapping[read.labels]
        counts = np.bincount(labels, minlength=data.num_classes)
        expected = torch.bincount(data.y_train, minlength=data.num_classes).numpy()
        for label in np.nonzero(counts != expected)[0]:
            raise UebenchError(
                f"{where}: class {data.classes[label]!r} has {counts[label]} images, the "
                f"training set has {expected[label]}"
            )
        order = np.concatenate([np.nonzero(labels == k)[0] for k in range(data.num_classes)])
        # Images come class by class; the dataset interleaves them: put each class's images,
        # in file order, at that class's places in the dataset.
        places = np.concatenate(
            [np.nonzero(data.y_train.numpy() == k)[0] for k in range(data.num_classes)]
        )
        placed = np.empty_like(read.array)
        placed[places] = read.array[order]
        read.array = placed
        return
    if read.labels is None:
        return
    labels = np.asarray(read.labels).reshape(-1)
    if len(labels) != len(data.y_train):
        raise UebenchError(
            f"{where}: {len(labels)} labels for a training set of {len(data.y_train)} images"
        )
    if labels.dtype.kind == "f":  # whole-valued floats are labels; 2.5 is not, nor NaN
        fractional = np.nonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0]
        if len(fractional):
            raise UebenchError(
                f"{where}: labels must be whole numbers; {len(fractional)} are not (first: "
                f"image {fractional[0]}, label {labels[fractional[0]]!r})"
            )
    elif labels.dtype.kind not in "iu":
        raise UebenchError(f"{where}: labels must be integers, got {labels.dtype}")
    differ = np.nonzero(labels.astype(np.int64) != data.y_train.numpy())[0]
    if len(differ):
        raise UebenchError(
            f"{where}: labels differ from the dataset's at {len(differ)} images (first: image "
            f"{differ[0]}); the file must be in the order the grid loads the dataset"
        )


def _check_order(published: torch.Tensor, clean: torch.Tensor, where: str) -> None:
    """The check that image i of the file is the dataset's image i, poisoned: for EVERY image,
    no compared clean image (the next, the previous and seeded random others,
    :data:`ORDER_COMPARISONS` in all) is strictly nearer (summed absolute difference) than its
    own.  One swapped or relabelled image is enough to refuse the file.

    Exact, yet about three passes over the images rather than nine: a partial sum over a
    seeded quarter of the pixels (:data:`_PREFIX_SHARE`) already at least the own distance
    settles a comparison (a sum of absolute values only grows); only the rest are summed in
    full.
    """
    n = len(clean)
    if n < 2:
        return
    generator = torch.Generator().manual_seed(0)
    others = [torch.roll(torch.arange(n), -1), torch.roll(torch.arange(n), 1)]
    others += [torch.randperm(n, generator=generator) for _ in range(ORDER_COMPARISONS - 2)]
    mine_all, theirs = published.flatten(1), clean.flatten(1)
    width = theirs.shape[1]
    pixels = torch.randperm(width, generator=generator)[: max(1, width // _PREFIX_SHARE)]
    prefix = theirs[:, pixels]
    misplaced = torch.zeros(n, dtype=torch.bool)
    for start in range(0, n, _CHUNK):
        part = slice(start, start + _CHUNK)
        mine = mine_all[part]
        own = _distance(mine, theirs[part])
        mine_prefix = mine[:, pixels]
        for other in others:
            index = other[part]
            # Ties (a clean image that appears twice) are no evidence of a swap.
            unsettled = _distance(mine_prefix, prefix[index]) < own
            rows = torch.nonzero(unsettled).flatten()
            if len(rows):
                nearer = _distance(mine[rows], theirs[index[rows]]) < own[rows]
                misplaced[start + rows[nearer]] = True
    if bool(misplaced.any()):
        bad = torch.nonzero(misplaced).flatten()
        raise UebenchError(
            f"{where}: {len(bad)} of its {n} images (first: image {int(bad[0])}) are nearer "
            "another clean image of the dataset than their own: not the dataset the grid "
            "loads, not in its order, or swapped or relabelled images (perturbations stored "
            "as images? pass content=delta)"
        )


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per image, the summed absolute difference of two uint8 batches (exact integers)."""
    return (torch.maximum(a, b) - torch.minimum(a, b)).flatten(1).sum(1, dtype=torch.int64)


def _check_budget(
    threat: ThreatModel, change: torch.Tensor, changed: torch.Tensor, where: str
) -> None:
    """Every image's change within the declared budget, or one line naming the worst image."""
    if threat.norm == "unbounded" or not bool(changed.any()):
        return
    index = torch.nonzero(changed).flatten()
    delta = change[index].float() / 255.0
    if threat.violation(delta) is None:
        return
    sizes = threat.measure(delta)
    worst = int(sizes.argmax())
    raise UebenchError(
        f"{where}: image {int(index[worst])} changes by {threat.norm} "
        f"{float(sizes[worst]):.5g}, beyond the declared budget {threat.describe()}"
    )
