"""The in-memory image set every part of uebench shares, and the operations on it.

Images stay ``uint8`` NCHW (what a published image is) until a batch is on the device; noise is
added in float and the result rounded back to 8 bits (:func:`add_noise_uint8`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, replace

import numpy as np
import torch

from uebench.errors import UebenchError


@dataclass(frozen=True)
class ImageData:
    """A labelled train/test image set: uint8 NCHW images, int64 labels, class names."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise UebenchError(
                    f"dataset {self.name!r}: {split} images must be uint8 NCHW, "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dim() != 1 or len(y) != len(x):
                raise UebenchError(
                    f"dataset {self.name!r}: {len(x)} {split} images but labels of shape "
                    f"{tuple(y.shape)}"
                )
            if not len(y):
                which = "training" if split == "train" else split
                raise UebenchError(f"dataset {self.name!r} has no {which} images")
            outside = y[(y < 0) | (y >= len(self.classes))]
            if len(outside):
                raise UebenchError(
                    f"dataset {self.name!r}: {split} labels outside 0..{len(self.classes) - 1} "
                    f"(the {len(self.classes)} classes): {_preview(outside.unique().tolist())}"
                )
        repeated = sorted({name for name in self.classes if self.classes.count(name) > 1})
        if repeated:
            # Two classes of one name cannot be told apart in a table or an exported folder.
            raise UebenchError(
                f"dataset {self.name!r}: class name(s) {_preview([repr(n) for n in repeated])} "
                "used for more than one class; every class needs its own name"
            )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise UebenchError(
                f"dataset {self.name!r}: train images {tuple(self.x_train.shape[1:])} and test "
                f"images {tuple(self.x_test.shape[1:])} differ in shape"
            )
        missing = self.classes_without_training_images()
        if missing:
            raise UebenchError(
                f"dataset {self.name!r}: no training images of class(es) "
                f"{self._class_preview(missing)} ({len(missing)} of {self.num_classes}); every "
                "class needs some"
            )

    def classes_without_training_images(self) -> list[int]:
        """The labels in 0..K-1 that no training image has (a poison and a victim need all)."""
        counts = torch.bincount(self.y_train, minlength=self.num_classes)
        return torch.nonzero(counts == 0).flatten().tolist()

    def _class_preview(self, labels: list[int]) -> str:
        names = [
            str(k) if self.classes[k] == str(k) else f"{k} ({self.classes[k]})" for k in labels
        ]
        return _preview(names)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A hash of the training images and labels: what a poison is crafted from."""
        return self._fingerprint

    @functools.cached_property
    def _fingerprint(self) -> str:
        # Hashing all of CIFAR-10 takes a noticeable fraction of a second; each cell asks twice.
        digest = hashlib.sha256()
        for tensor in (self.x_train, self.y_train):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def subset(self, train_size: int | None, test_size: int | None, seed: int = 0) -> ImageData:
        """Stratified, seeded subsets of the train and test splits (None keeps a split whole)."""
        x_train, y_train, x_test, y_test = self.x_train, self.y_train, self.x_test, self.y_test
        # Named by its flag: the sizes come from --train-size/--test-size (or the same keys of
        # a config file or protocol), and "subset size N" did not say which of the two was off.
        for flag, size, split, labels in (
            ("--train-size", train_size, "training", y_train),
            ("--test-size", test_size, "test", y_test),
        ):
            if size is not None and size > len(labels):
                raise UebenchError(
                    f"{flag} {size} is more than the {len(labels)} {split} images dataset "
                    f"{self.name!r} has; use at most {len(labels)}"
                )
        if train_size is not None:
            keep = stratified_indices(y_train, train_size, seed)
            x_train, y_train = x_train[keep], y_train[keep]
            dropped = sorted(set(range(self.num_classes)) - set(y_train.unique().tolist()))
            if dropped:
                raise UebenchError(
                    f"dataset {self.name!r}: a training subset of {train_size} images leaves "
                    f"{len(dropped)} of its {self.num_classes} classes without any "
                    f"({self._class_preview(dropped)}); use a larger train_size"
                )
        if test_size is not None:
            keep = stratified_indices(y_test, test_size, seed + 1)
            x_test, y_test = x_test[keep], y_test[keep]
            dropped = sorted(set(self.y_test.unique().tolist()) - set(y_test.unique().tolist()))
            if dropped:
                raise UebenchError(
                    f"dataset {self.name!r}: a test subset of {test_size} images leaves "
                    f"{len(dropped)} of its {self.num_classes} classes without any "
                    f"({self._class_preview(dropped)}); use a test_size of at least "
                    f"{self.num_classes}, large enough for every class"
                )
        return replace(self, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def from_numpy_nhwc(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    classes: tuple[str, ...] | list[str] | None = None,
) -> ImageData:
    """Build an :class:`ImageData` from uint8 NHWC (or NHW grayscale) numpy arrays."""

    def images(array: np.ndarray, split: str) -> torch.Tensor:
        array = np.asarray(array)
        if array.dtype != np.uint8:
            raise UebenchError(f"dataset {name!r}: {split} images must be uint8, got {array.dtype}")
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4:
            raise UebenchError(
                f"dataset {name!r}: {split} images must be NHWC, got shape {array.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))

    def labels(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array).astype(np.int64).reshape(-1))

    y_tr, y_te = labels(y_train), labels(y_test)
    if classes is None:
        # K comes from the training labels alone: a stray test label is then out of range
        # rather than a new class, and ImageData says so.
        count = int(y_tr.max()) + 1 if len(y_tr) else 0
        classes = tuple(str(i) for i in range(count))
        missing = sorted(set(range(count)) - set(y_tr.unique().tolist()))
        if missing:
            raise UebenchError(
                f"dataset {name!r}: no training images of class(es) {_preview(missing)} "
                f"({len(missing)} of {count}); labels must run 0..K-1 with every class in "
                f"training, and without a classes list K is the largest training label + 1"
            )
    return ImageData(
        name,
        images(x_train, "train"),
        y_tr,
        images(x_test, "test"),
        y_te,
        tuple(classes),
    )


def _preview(items: list, limit: int = 8) -> str:
    """``a, b, c`` or ``a, b, ..., z``: a list short enough for one line."""
    shown = [str(item) for item in items]
    if len(shown) <= limit:
        return ", ".join(shown)
    return f"{', '.join(shown[: limit - 1])}, ..., {shown[-1]}"


def stratified_indices(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """``size`` indices with class proportions kept, chosen with a seeded generator, sorted."""
    n = len(labels)
    if not 0 < size <= n:
        raise UebenchError(f"subset size {size} must be between 1 and {n}")
    if size == n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    # Largest-remainder allocation keeps the total exact and each class proportional.
    exact = counts.double() * size / n
    quota = exact.floor().long()
    remainder = size - int(quota.sum())
    if remainder:
        quota[torch.argsort(exact - quota, descending=True)[:remainder]] += 1
    chosen = []
    for cls, take in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.sort(torch.cat(chosen)).values


def add_noise_uint8(x: torch.Tensor, delta: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``x + delta`` as a published image: clipped to [0, 1] and rounded to 8 bits.

    ``x`` is uint8, ``delta`` float in [0, 1] units (negative values kept: dropping them is a
    known bug of the reference code).  With ``eps`` the rounding never leaves the ε-ball.
    """
    noisy = (x.float() + delta.float() * 255.0).round().clamp(0, 255)
    if eps is not None:
        budget = float(np.floor(eps * 255.0 + 1e-4))
        noisy = torch.minimum(torch.maximum(noisy, x.float() - budget), x.float() + budget)
    return noisy.to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float in [0, 1] (on whatever device ``x`` is)."""
    return x.float().div_(255.0)
