"""Built-in dataset plugins (entry-point group ``uebench.datasets``) and :func:`load_dataset`.

Every loader is ``NAME(root, *, options) -> ImageData``: ``root`` is the user's ``--data-root``
(may be None), the keyword-only parameters are the options of a spec such as ``npz:data/x.npz``
or ``cifar10:download=true``.  Anything wrong with the user's files becomes a one-line
:class:`UebenchError`.  torchvision is imported inside the loaders that need it: importing it
costs seconds that ``digits`` and ``npz`` users should not pay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from uebench.data import ImageData, from_numpy_nhwc, stratified_indices
from uebench.errors import UebenchError, one_line
from uebench.registry import DATASETS
from uebench.scenarios import resolve_classes
from uebench.storage.numpy_files import NUMPY_ERRORS, is_numpy_magic, load_numpy

DEFAULT_ROOT = "~/.cache/uebench/data"
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_KEY_LIST = ", ".join(_NPZ_KEYS)


def _root(root: str | None) -> Path:
    return Path(root or DEFAULT_ROOT).expanduser()


# --------------------------------------------------------------------------- embedded default


def digits(root: str | None, *, size: int = 16) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (ships with sklearn, works offline), 1 channel.

    Pixel values 0..16 are scaled to 0..255, then resized to ``size``x``size`` (bilinear,
    antialiased) unless ``size`` is 8.  A fixed stratified 80/20 split makes train and test.
    """
    from sklearn.datasets import load_digits

    if size < 1:
        raise UebenchError(f"digits: size must be a positive integer, got {size}")
    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8))[:, None]
    if size != 8:
        x = torch.nn.functional.interpolate(
            x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.round().clamp(0, 255).to(torch.uint8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # A fixed seed: the split is part of the dataset, not of an experiment's randomness.
    test = torch.zeros(len(y), dtype=torch.bool)
    test[stratified_indices(y, round(0.2 * len(y)), seed=0)] = True
    return ImageData("digits", x[~test], y[~test], x[test], y[test], DIGIT_CLASSES)


def cluttered_digits(
    root: str | None,
    *,
    size: int = 16,
    digit_size: int = 12,
    copies: int = 3,
    contrast: float = 0.6,
    clutter: float = 0.15,
    pixel_noise: float = 0.06,
    seed: int = 0,
    split: Literal["glyph", "image"] = "glyph",
) -> ImageData:
    """The default: real sklearn digits at random places on a cluttered colour canvas.

    Plain ``digits`` are learned in one epoch and nearly linearly separable, so ε-sized noise
    is never an easier feature than the digits themselves and no unlearnable effect can show.
    Here each 8×8 digit is scaled to ``digit_size``² pixels (bilinear) and drawn ``copies`` times at
    a random position on a ``size``×``size`` RGB canvas of smooth random colour (±``clutter``)
    plus pixel noise, with a random per-channel contrast in [``contrast``, ``contrast`` + 0.2]:
    a CNN needs some epochs to learn it, as natural images, which is where unlearnable examples
    work.  The defaults were chosen by measurement (``benchmarks/headline.py``): strokes strong
    enough that ε = 8/255 adversarial training still learns the digits (at ``digit_size=8``,
    ``contrast=0.2``, ``clutter=0.3`` it stays at chance), in few enough epochs for a CPU.
    """
    from sklearn.datasets import load_digits

    if size < 8 or copies < 1 or not 1 <= digit_size <= size:
        raise UebenchError(
            "cluttered-digits needs size >= 8, 1 <= digit_size <= size and copies >= 1, got "
            f"size={size}, digit_size={digit_size}, copies={copies}"
        )
    bunch = load_digits()
    generator = torch.Generator().manual_seed(seed)
    glyphs = torch.from_numpy(bunch.images / 16.0).float()
    if digit_size != 8:
        glyphs = torch.nn.functional.interpolate(
            glyphs[:, None], size=(digit_size, digit_size), mode="bilinear", align_corners=False
        )[:, 0]
    y = torch.from_numpy(bunch.target.astype(np.int64)).repeat(copies)
    x = draw_on_clutter(
        glyphs.repeat(copies, 1, 1), size, contrast, clutter, pixel_noise, generator
    )
    glyph_labels = torch.from_numpy(bunch.target.astype(np.int64))
    test = cluttered_digits_test_mask(glyph_labels, copies, split, seed)
    return ImageData("cluttered-digits", x[~test], y[~test], x[test], y[test], DIGIT_CLASSES)


def draw_on_clutter(
    glyphs: torch.Tensor,
    size: int,
    contrast: float,
    clutter: float,
    pixel_noise: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Each glyph (N×h×w, in [0, 1]) drawn at a random place on its own ``size``×``size`` RGB
    canvas of smooth random colour (±``clutter``) and pixel noise, at a random per-channel
    contrast in [``contrast``, ``contrast`` + 0.2]; uint8 N×3×size×size."""
    n, digit_size = len(glyphs), glyphs.shape[-1]
    background = (torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1) * clutter
    canvas = torch.nn.functional.interpolate(
        background, size=(size, size), mode="bilinear", align_corners=False
    )
    canvas += 0.5 + torch.randn(n, 3, size, size, generator=generator) * pixel_noise
    strength = contrast + 0.2 * torch.rand(n, 3, 1, 1, generator=generator)
    top, left = torch.randint(0, size - digit_size + 1, (2, n, 1, 1), generator=generator)
    offsets = torch.arange(digit_size)
    layer = torch.zeros(n, size, size)
    layer[
        torch.arange(n)[:, None, None],
        top + offsets[None, :, None],
        left + offsets[None, None, :],
    ] = glyphs
    canvas += strength * layer[:, None]
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8)


def cluttered_digits_test_mask(
    glyph_labels: torch.Tensor, copies: int, split: str, seed: int
) -> torch.Tensor:
    """Which of the ``copies × glyphs`` images (copy-major order) form the 20% test split.

    ``glyph``: whole glyphs, every copy of a test glyph in test, so the test set measures unseen
    handwriting rather than glyphs already seen in training.  ``image``: the earlier random
    split of images (copies of one glyph on both sides), kept only to reproduce numbers
    measured before the glyph split.
    """
    if split == "image":
        labels = glyph_labels.repeat(copies)
        test = torch.zeros(len(labels), dtype=torch.bool)
        test[stratified_indices(labels, round(0.2 * len(labels)), seed=seed)] = True
        return test
    test_glyph = torch.zeros(len(glyph_labels), dtype=torch.bool)
    test_glyph[stratified_indices(glyph_labels, round(0.2 * len(glyph_labels)), seed=seed)] = True
    return test_glyph.repeat(copies)


# --------------------------------------------------------------------------- npz files


def _read_npz(path: Path, name: str, classes: Sequence[str] | None = None) -> ImageData:
    """Read an archive with x_train, y_train, x_test, y_test (and optional ``classes``)."""
    try:
        with path.open("rb") as file:
            magic = file.read(6)
        # numpy takes anything neither zip nor .npy for a pickle, and its error then suggests
        # loading it unsafely: say what is wrong instead.  allow_pickle=False: no file runs code.
        if not is_numpy_magic(magic):
            raise ValueError("neither a zip nor a .npy file")
        archive = load_numpy(path)
    except NUMPY_ERRORS as error:
        raise UebenchError(f"cannot read {path} as an .npz archive: {one_line(error)}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UebenchError(f"{path} holds a single array, not an .npz archive of {_KEY_LIST}")
    with archive:
        missing = [key for key in _NPZ_KEYS if key not in archive.files]
        if missing:
            raise UebenchError(
                f"{path} lacks key(s) {', '.join(missing)}; expected {_KEY_LIST} "
                "(and optionally classes)"
            )
        arrays = {}
        for key in (*_NPZ_KEYS, "classes"):
            if key not in archive.files:
                continue
            try:  # members are read lazily: corruption (or pickled objects) shows up here
                arrays[key] = archive[key]
            except NUMPY_ERRORS as error:
                raise UebenchError(f"{path}: cannot read {key}: {one_line(error)}") from None
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 0 or y.ndim == 0:
            name, array = (f"x_{split}", x) if x.ndim == 0 else (f"y_{split}", y)
            shape = "N×H×W×C or N×H×W images" if name[0] == "x" else "N labels"
            raise UebenchError(f"{path}: {name} must be {shape}, got a 0-dim array ({array.dtype})")
        if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] in (1, 3))):
            raise UebenchError(
                f"{path}: x_{split} must be uint8 of shape (N, H, W, 1 or 3) or (N, H, W), "
                f"got {x.dtype} {x.shape}"
            )
        if y.dtype.kind not in "iu":
            raise UebenchError(f"{path}: y_{split} must hold integer labels, got {y.dtype}")
        if y.size != len(x) or y.ndim > 2:
            raise UebenchError(f"{path}: {len(x)} {split} images but y_{split} has shape {y.shape}")
    if "classes" in arrays:
        names = arrays["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise UebenchError(f"{path}: classes must be a 1-D array of strings, got {names.dtype}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
    return from_numpy_nhwc(name, *(arrays[key] for key in _NPZ_KEYS), classes=classes)


def npz(root: str | None, *, path: str = "") -> ImageData:
    """An .npz file with uint8 NHWC (or NHW) x_train/x_test, integer y_train/y_test, optional
    ``classes``.  A relative ``path`` is looked up in the working directory, then under ``root``.
    The dataset is named after the file (``my`` for ``data/my.npz``).
    """
    if not path:
        raise UebenchError("npz needs a file: write npz:PATH (e.g. npz:data/my.npz)")
    file = Path(path).expanduser()
    if not file.is_absolute() and not file.exists() and root:
        file = Path(root).expanduser() / file
    if not file.is_file():
        where = f" (also tried under {root})" if root and not Path(path).is_absolute() else ""
        raise UebenchError(f"npz file {path} not found{where}")
    return _read_npz(file, file.stem)


# --------------------------------------------------------------------------- torchvision sets


def _torchvision_splits(
    title: str, root: Path, holds: str, make: Callable[[bool], Any]
) -> tuple[Any, Any]:
    """``make(train)`` for both splits, torchvision's exceptions turned into one line."""
    try:
        return make(True), make(False)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted"
        if "not found" not in str(error).lower():
            raise UebenchError(f"{title} under {root}: {one_line(error)}") from None
        raise UebenchError(
            f"{title} not found under {root}: point --data-root at a folder holding {holds}, "
            "or add :download=true (needs internet)"
        ) from None
    except (OSError, ValueError, EOFError, KeyError) as error:  # e.g. no network for download
        raise UebenchError(f"{title} under {root} could not be loaded: {one_line(error)}") from None


def _cifar(
    title: str, name: str, root: str | None, download: bool, classes: Sequence[str]
) -> ImageData:
    base = _root(root)
    for candidate in (base / f"{name}.npz", base / name / f"{name}.npz"):
        if candidate.is_file():
            return _read_npz(candidate, name, classes)
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    # torchvision checks every file's md5 before unpickling it, so only the official archives
    # are ever unpickled.
    train, test = _torchvision_splits(
        title,
        base,
        f"{cls.base_folder} or {name}.npz",
        lambda is_train: cls(str(base), train=is_train, download=download),
    )
    return from_numpy_nhwc(
        name,
        train.data,
        np.asarray(train.targets),
        test.data,
        np.asarray(test.targets),
        classes=train.classes,
    )


def cifar10(root: str | None, *, download: bool = False) -> ImageData:
    """CIFAR-10 from ``root/cifar10.npz`` if present, else torchvision's ``cifar-10-batches-py``
    (``root`` defaults to ~/.cache/uebench/data)."""
    return _cifar("CIFAR-10", "cifar10", root, download, CIFAR10_CLASSES)


def cifar100(root: str | None, *, download: bool = False) -> ImageData:
    """CIFAR-100 (fine labels) from ``root/cifar100.npz`` if present, else torchvision's
    ``cifar-100-python`` (``root`` defaults to ~/.cache/uebench/data)."""
    return _cifar("CIFAR-100", "cifar100", root, download, tuple(str(i) for i in range(100)))


def svhn(root: str | None, *, download: bool = False) -> ImageData:
    """SVHN (train and test, not extra) through torchvision; digit 0 is label 0."""
    import torchvision.datasets as tvd

    base = _root(root)
    train, test = _torchvision_splits(
        "SVHN",
        base,
        "train_32x32.mat and test_32x32.mat",
        lambda is_train: tvd.SVHN(
            str(base), split="train" if is_train else "test", download=download
        ),
    )

    def tensors(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
        # torchvision already gives NCHW uint8 for SVHN.
        x = torch.from_numpy(np.ascontiguousarray(split.data, dtype=np.uint8))
        return x, torch.from_numpy(np.asarray(split.labels, dtype=np.int64).reshape(-1))

    return ImageData("svhn", *tensors(train), *tensors(test), DIGIT_CLASSES)


# --------------------------------------------------------------------------- image folders


def _read_images(files: Sequence[str], size: int) -> torch.Tensor:
    from PIL import Image

    # Filled in place as NCHW: for an ImageNet subset a second copy would not fit in memory.
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image.draft("RGB", (size, size))  # JPEGs decode at reduced scale: much faster
                rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(rgb).transpose(2, 0, 1)
        except (OSError, ValueError) as error:
            raise UebenchError(f"cannot read image {file}: {one_line(error)}") from None
    return torch.from_numpy(out)


def _image_folder(
    name: str,
    directory: Path,
    size: int,
    test_dirs: Sequence[str],
    max_classes: int | None = None,
) -> ImageData:
    """train/ and the first existing of ``test_dirs``, one subfolder per class (ImageFolder
    layout); classes come from train/ in sorted order, the first ``max_classes`` kept."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if size < 1:
        raise UebenchError(f"image size must be a positive integer, got {size}")
    train_dir = directory / "train"
    test_dir = next((directory / d for d in test_dirs if (directory / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise UebenchError(
            f"{directory} must hold train/ and {' or '.join(f'{d}/' for d in test_dirs)}"
            " with one subfolder of images per class"
        )
    try:
        classes = find_classes(train_dir)[0]
        if max_classes is not None and len(classes) < max_classes:
            raise ValueError(f"{max_classes} classes asked for, train/ has {len(classes)}")
        classes = classes[:max_classes]
        index = {c: i for i, c in enumerate(classes)}
        train = make_dataset(train_dir, index, extensions=IMG_EXTENSIONS)
        test = make_dataset(test_dir, index, extensions=IMG_EXTENSIONS)
    except (OSError, ValueError) as error:
        raise UebenchError(f"{directory}: {one_line(error)}") from None
    if max_classes is None:
        # A test class absent from train/ would otherwise be dropped without a word.
        extra = sorted(set(find_classes(test_dir)[0]) - set(classes))
        if extra:
            raise UebenchError(f"{test_dir} has classes not in train/: {', '.join(extra)}")

    def split(samples: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return _read_images([file for file, _ in samples], size), labels

    return ImageData(name, *split(train), *split(test), tuple(classes))


def imagenet_subset(root: str | None, *, classes: int = 100, size: int = 224) -> ImageData:
    """The first ``classes`` class folders (sorted) of an ImageNet-style tree ``root/train``,
    ``root/val`` (or ``root/test``), every image resized to ``size``x``size`` RGB."""
    if root is None:
        raise UebenchError("imagenet-subset needs --data-root: a folder holding train/ and val/")
    if classes < 1:
        raise UebenchError(f"imagenet-subset: classes must be a positive integer, got {classes}")
    return _image_folder("imagenet-subset", Path(root).expanduser(), size, ("val", "test"), classes)


def folder(root: str | None, *, path: str | None = None, size: int = 32) -> ImageData:
    """Any ImageFolder tree with train/ and test/ (or val/) at ``path`` (default: ``root``),
    every image resized to ``size``x``size`` RGB; named after the folder."""
    where = path or root
    if not where:
        raise UebenchError("folder needs a directory: write folder:PATH or give --data-root")
    directory = Path(where).expanduser()
    return _image_folder(directory.resolve().name or "folder", directory, size, ("test", "val"))


# --------------------------------------------------------------------------- public entry


BUILTIN_DATASETS: dict[str, Callable[..., ImageData]] = {
    "digits": digits,
    "cluttered-digits": cluttered_digits,
    "cifar10": cifar10,
    "cifar100": cifar100,
    "svhn": svhn,
    "imagenet-subset": imagenet_subset,
    "folder": folder,
    "npz": npz,
}


def add_classes(
    root: str | None,
    *,
    base: str = "cifar100",
    extra: str = "cifar10",
    extra_root: str | None = None,
    classes: tuple[str, ...] = ("ship",),
) -> ImageData:
    """``base`` with some classes of ``extra`` appended as new classes (train and test).

    Section 4.4's sample-wise transfer: CIFAR-10's 'ship' images added to CIFAR-100 as a 101st
    class; with ``transfer:method=[emin]:dataset=cifar10`` those images carry the noise crafted
    for them on CIFAR-10.  ``extra_root`` defaults to ``--data-root``.
    """
    first = DATASETS.build(base, root)
    second = DATASETS.build(extra, extra_root or root)
    if first.image_shape != second.image_shape:
        raise UebenchError(
            f"add-classes: {base} images are {first.image_shape}, {extra} images "
            f"{second.image_shape}"
        )
    chosen = resolve_classes(classes, second.classes)
    relabel = torch.full((second.num_classes,), -1, dtype=torch.long)
    relabel[torch.tensor(chosen)] = torch.arange(len(chosen)) + first.num_classes

    def join(x: torch.Tensor, y: torch.Tensor, x_more: torch.Tensor, y_more: torch.Tensor):
        keep = relabel[y_more] >= 0
        return torch.cat([x, x_more[keep]]), torch.cat([y, relabel[y_more][keep]])

    x_train, y_train = join(first.x_train, first.y_train, second.x_train, second.y_train)
    x_test, y_test = join(first.x_test, first.y_test, second.x_test, second.y_test)
    names = (*first.classes, *(f"{second.classes[k]} ({second.name})" for k in chosen))
    return ImageData(f"{first.name}+{second.name}", x_train, y_train, x_test, y_test, names)


def load_dataset(
    spec: str,
    root: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Build the dataset named by ``spec`` (e.g. ``"npz:data/x.npz"``) from the registry, then
    take stratified, seeded subsets of ``train_size``/``test_size`` images (None: all)."""
    data = DATASETS.build(spec, root)
    return data.subset(train_size, test_size, seed)
