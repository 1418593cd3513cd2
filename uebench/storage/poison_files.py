"""Poisoned training sets as files: reading what other tools wrote, writing what others read.

Formats: ``.npz`` and ``.npy`` (numpy, never unpickled), ``.pt`` (``torch.load`` with
``weights_only=True`` only) and ImageFolder trees of PNG or JPEG images (one folder per class,
directly or under ``train/``).  The method ``file`` (:mod:`uebench.methods.external`) reads
them; ``uebench export`` (:mod:`uebench.cli.export`) writes PNG folders and ``.npz`` files.
Content and layout checks against a dataset belong to the method; this module only moves
arrays in and out of files, and hashes them.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uebench.errors import UebenchError, one_line
from uebench.files import os_error_line
from uebench.storage.numpy_files import NUMPY_ERRORS, is_numpy_magic, load_numpy

#: Keys an archive's array may have, by what it holds.
IMAGE_KEYS = ("x_train", "poisoned", "images", "x", "data", "arr_0")
DELTA_KEYS = ("delta", "perturbation", "perturbations", "noise")
LABEL_KEYS = ("y_train", "labels", "y", "targets")
ARRAY_SUFFIXES = (".npz", ".npy", ".pt", ".pth")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Suffixes of formats that can run code when read; refused by name before anything is opened.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p", ".joblib")


@dataclass
class PoisonFile:
    """What a poison file holds: one array (images or perturbations) and optional labels.

    ``array`` is as stored (any dtype, NCHW or NHWC, or per-class lists for folders);
    ``labels`` the training labels the file gives (None when it gives none); ``content`` is
    ``images``, ``delta`` or ``auto`` (to be decided from the values); ``classes`` the class
    folder names of an ImageFolder tree (None for arrays); ``sha256`` the hash
    (:func:`file_sha256`) of the very bytes these arrays were read from.
    """

    array: np.ndarray
    labels: np.ndarray | None
    content: str
    format: str
    key: str | None = None
    classes: tuple[str, ...] | None = None
    sha256: str = ""


def check_readable(path: Path) -> str:
    """The format of ``path`` (``npz``, ``npy``, ``pt`` or ``folder``); refuses, in one line,
    a missing path, an unknown suffix and anything that would have to be unpickled."""
    if not path.exists():
        raise UebenchError(f"poison file {path} does not exist")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UebenchError(
            f"{path} is a pickle; uebench never unpickles files (they can run code): save the "
            "arrays with numpy.savez or torch.save of tensors"
        )
    if suffix not in ARRAY_SUFFIXES:
        raise UebenchError(
            f"{path}: unknown poison format {suffix or '(no suffix)'}; use .npz, .npy, .pt or a "
            "folder of PNG/JPEG images"
        )
    with path.open("rb") as handle:
        magic = handle.read(6)
    if suffix in (".npz", ".npy") and not is_numpy_magic(magic):
        what = "a pickle" if magic[:1] == b"\x80" else "neither a zip nor a .npy file"
        raise UebenchError(
            f"{path} is {what}; uebench reads numpy files only with allow_pickle=False"
        )
    return "pt" if suffix in (".pt", ".pth") else suffix[1:]


def read_poison_file(path: Path, key: str | None = None) -> PoisonFile:
    """Read a poison file of any supported format (see :func:`check_readable`), hashing the
    bytes it reads (``sha256``): what was read is what the hash names, even if the file is
    replaced meanwhile."""
    kind = check_readable(path)
    if kind == "folder":
        return _read_folder(path)
    try:
        content = path.read_bytes()
    except OSError as error:
        raise UebenchError(os_error_line(error, path, "reading")) from None
    arrays = _read_numpy(path, content) if kind in ("npz", "npy") else _read_torch(path, content)
    read = _pick(path, kind, arrays, key)
    if read.array.ndim == 0:
        raise UebenchError(
            f"{path}: {read.key or 'its array'} must be N×H×W×C or N×C×H×W images, got a 0-dim "
            "array"
        )
    read.sha256 = hashlib.sha256(content).hexdigest()
    return read


def _read_numpy(path: Path, content: bytes) -> dict[str, np.ndarray]:
    try:
        loaded = load_numpy(path, content)
        if isinstance(loaded, np.ndarray):
            return {"": loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except ValueError as error:
        if "pickle" in str(error).lower():
            raise UebenchError(
                f"{path} holds pickled objects; uebench reads numpy files only with "
                "allow_pickle=False (store plain numeric arrays)"
            ) from None
        raise UebenchError(f"cannot read {path}: {one_line(error)}") from None
    except NUMPY_ERRORS as error:
        raise UebenchError(f"cannot read {path}: {one_line(error)}") from None


def _read_torch(path: Path, content: bytes) -> dict[str, np.ndarray]:
    try:
        loaded = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses anything but tensors and plain types
        # torch's own message advises weights_only=False, which would run the file's code.
        raise UebenchError(
            f"{path} cannot be read with torch.load(weights_only=True) "
            f"({type(error).__name__}): it holds objects other than tensors; save a tensor or a "
            "dict of tensors (uebench never unpickles objects)"
        ) from None
    if isinstance(loaded, torch.Tensor):
        return {"": loaded.numpy()}
    if isinstance(loaded, dict):
        found = {str(k): v.numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if found:
            return found
    raise UebenchError(f"{path} holds {type(loaded).__name__}, not a tensor or a dict of tensors")


def _pick(path: Path, kind: str, arrays: dict[str, np.ndarray], key: str | None) -> PoisonFile:
    """The one images/perturbations array of an archive (and its labels, if any)."""
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    if key is not None:
        if key not in arrays:
            raise UebenchError(f"{path} has no array {key!r}; it has {', '.join(arrays)}")
        content = "delta" if key in DELTA_KEYS else "images" if key in IMAGE_KEYS else "auto"
        return PoisonFile(arrays[key], labels, content, kind, key)
    if "" in arrays:
        return PoisonFile(arrays[""], None, "auto", kind)
    candidates = [k for k in (*IMAGE_KEYS, *DELTA_KEYS) if k in arrays]
    if len(candidates) != 1:
        known = ", ".join((*IMAGE_KEYS, *DELTA_KEYS))
        has = ", ".join(arrays) or "nothing"
        which = "several of" if candidates else "none of"
        raise UebenchError(
            f"{path} holds {which} the keys {known} (it has {has}); name one with key=NAME"
        )
    chosen = candidates[0]
    return PoisonFile(
        arrays[chosen], labels, "delta" if chosen in DELTA_KEYS else "images", kind, chosen
    )


def _natural(name: str) -> tuple[int, int | str]:
    """Sort key: numeric stems by number (``2.png`` before ``10.png``), others by name."""
    stem = Path(name).stem
    return (0, int(stem)) if re.fullmatch(r"\d+", stem) else (1, name)


def folder_files(path: Path) -> dict[str, list[Path]]:
    """Class name -> its image files in natural order, for an ImageFolder tree at ``path``
    (or at ``path/train``)."""
    root = path / "train" if (path / "train").is_dir() else path
    classes: dict[str, list[Path]] = {}
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        files = [
            f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        ]
        classes[directory.name] = sorted(files, key=lambda f: _natural(f.name))
    if not classes or not any(classes.values()):
        raise UebenchError(
            f"{path} is not an ImageFolder tree: expected one folder of PNG/JPEG images per "
            "class (directly or under train/)"
        )
    return classes


def _read_folder(path: Path) -> PoisonFile:
    """Every image of an ImageFolder tree, class by class, as one uint8 NHWC array, hashed as
    :func:`file_sha256` hashes the folder, from the bytes decoded."""
    from PIL import Image

    classes = folder_files(path)
    images, labels = [], []
    digest = hashlib.sha256()
    for label, files in enumerate(classes.values()):
        for file in files:
            try:
                content = file.read_bytes()
                digest.update(file.relative_to(path).as_posix().encode() + b"\0" + content)
                with Image.open(io.BytesIO(content)) as image:
                    mode = "L" if image.mode in ("L", "I;16", "1") else "RGB"
                    array = np.asarray(image.convert(mode))
            except (OSError, ValueError) as error:
                raise UebenchError(f"cannot read image {file}: {one_line(error)}") from None
            images.append(array if array.ndim == 3 else array[..., None])
            labels.append(label)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise UebenchError(f"{path}: images differ in size or channels: {sorted(shapes)[:3]}")
    return PoisonFile(
        np.stack(images),
        np.asarray(labels),
        "images",
        "folder",
        classes=tuple(classes),
        sha256=digest.hexdigest(),
    )


def file_sha256(path: str | Path) -> str:
    """sha256 of a poison file, or of a folder's image files (relative names and bytes, in
    order), so that editing any image is a new hash.  Cached per path, size and mtime."""
    path = Path(path).expanduser().resolve()
    check_readable(path)
    if path.is_dir():
        files = [f for files in folder_files(path).values() for f in files]
        signature = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    else:
        stat = path.stat()
        files = [path]
        signature = ((str(path), stat.st_size, stat.st_mtime_ns),)
    return _hash_files(path, signature)


@functools.lru_cache(maxsize=64)
def _hash_files(root: Path, signature: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in signature:
        file = Path(name)
        if root.is_dir():
            digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def published_sha256(x: torch.Tensor, y: torch.Tensor) -> str:
    """sha256 of a published training set: uint8 N×C×H×W images and int64 labels.

    The same images give the same hash whichever tool or method made them: what an exported
    cell and the ``file`` cell that reads the export share.
    """
    digest = hashlib.sha256()
    digest.update(str(tuple(x.shape)).encode())
    digest.update(x.to(torch.uint8).contiguous().numpy().tobytes())
    digest.update(y.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def change_norms(change: torch.Tensor) -> dict[str, Any]:
    """L∞, L2 (in [0, 1] units) and L0 (pixel positions) of the integer changes (published −
    clean, N×C×H×W, changed images only) of a poisoned set: max and mean over images.

    From the exact integer changes, so the numbers (part of the poison's hash) do not depend on
    thread counts or devices.
    """
    if not len(change):
        zero = {"max": 0.0, "mean": 0.0}
        return {"images": 0, "linf": zero, "l2": zero, "l0": zero}
    flat = change.flatten(1)
    # Integer arithmetic (exact, so the same on every machine), then float64 for the roots.
    linf = flat.abs().amax(1).numpy().astype(np.float64) / 255.0
    squares = flat.to(torch.int32).square().sum(1, dtype=torch.int64).numpy()
    l2 = np.sqrt(squares.astype(np.float64)) / 255.0
    l0 = change.ne(0).any(1).flatten(1).sum(1).numpy().astype(np.float64)

    def summary(values: np.ndarray) -> dict[str, float]:
        return {"max": round(float(values.max()), 8), "mean": round(float(values.mean()), 8)}

    return {"images": len(flat), "linf": summary(linf), "l2": summary(l2), "l0": summary(l0)}
