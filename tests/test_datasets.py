"""Dataset loaders, on tiny files written to tmp_path in each format the loaders accept."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from uebench.datasets import (
    BUILTIN_DATASETS,
    CIFAR10_CLASSES,
    cifar10,
    cifar100,
    digits,
    folder,
    imagenet_subset,
    load_dataset,
    npz,
    svhn,
)
from uebench.errors import UebenchError
from uebench.registry import DATASETS

REAL_CIFAR10 = Path("/work/shared/data/cifar10")


@pytest.fixture(autouse=True, scope="module")
def _registered() -> None:
    # Without `pip install -e .` there are no entry points; register the same functions.
    for name, fn in BUILTIN_DATASETS.items():
        if name not in DATASETS.names():
            DATASETS.register(name, fn)


@pytest.fixture
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision accepts only the official files (md5); let it read the tiny fakes."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda *a, **k: True)


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...] = (32, 32, 3)) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_npz(path: Path, **override: object) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": _images(rng, 20),
        "y_train": np.arange(20) % 10,
        "x_test": _images(rng, 10),
        "y_test": np.arange(10) % 10,
        **override,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def _assert_one_line(error: pytest.ExceptionInfo[UebenchError], *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# --------------------------------------------------------------------------- digits


def test_digits_shapes_split_and_determinism() -> None:
    data = digits(None)
    assert data.name == "digits"
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.x_train.shape[1:] == (1, 16, 16) and data.image_shape == (1, 16, 16)
    assert data.classes == tuple(str(i) for i in range(10))
    assert len(data.x_train) + len(data.x_test) == 1797 and len(data.x_test) == 359
    train_counts = torch.bincount(data.y_train, minlength=10)
    test_counts = torch.bincount(data.y_test, minlength=10)
    # Stratified: every class is 20% test, up to rounding.
    assert ((test_counts - 0.2 * (train_counts + test_counts)).abs() <= 1).all()
    again = digits(None)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(data, key), getattr(again, key))


def test_digits_native_size_is_the_scaled_8x8() -> None:
    data = digits(None, size=8)
    assert data.image_shape == (1, 8, 8)
    levels = set(np.rint(np.arange(17) * 255 / 16).astype(int).tolist())
    assert set(torch.unique(data.x_train).tolist()) <= levels  # no interpolated values
    assert int(data.x_train.max()) == 255 and int(data.x_train.min()) == 0


# --------------------------------------------------------------------------- CIFAR / SVHN


def test_cifar10_from_npz(tmp_path: Path) -> None:
    arrays = _write_npz(tmp_path / "cifar10.npz", extra=np.zeros(3, dtype=bool))
    data = cifar10(str(tmp_path))
    assert data.name == "cifar10" and data.classes == CIFAR10_CLASSES
    assert torch.equal(data.x_train, torch.from_numpy(arrays["x_train"].transpose(0, 3, 1, 2)))
    assert data.y_test.tolist() == arrays["y_test"].tolist()


def test_cifar10_npz_classes_key_wins(tmp_path: Path) -> None:
    names = np.array([f"c{i}" for i in range(10)])
    _write_npz(tmp_path / "cifar10.npz", classes=names)
    assert cifar10(str(tmp_path)).classes == tuple(names.tolist())


def _pickle(path: Path, obj: dict) -> None:
    # The official batches are Python 2 pickles with str keys (not bytes) once loaded.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def test_cifar10_through_torchvision(tmp_path: Path, no_md5: None) -> None:
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rows = {}
    for i, file in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows[file] = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        _pickle(base / file, {"data": rows[file], "labels": [i % 10, (i + 5) % 10]})
    _pickle(base / "batches.meta", {"label_names": list(CIFAR10_CLASSES)})
    data = cifar10(str(tmp_path))
    assert data.classes == CIFAR10_CLASSES
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.y_train.tolist() == [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    assert data.y_test.tolist() == [5, 0]
    # Row layout is channel-major (R plane, G plane, B plane): check it survived as NCHW.
    assert torch.equal(data.x_test[1], torch.from_numpy(rows["test_batch"][1].reshape(3, 32, 32)))


def test_cifar100_through_torchvision(tmp_path: Path, no_md5: None) -> None:
    rng = np.random.default_rng(2)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    # Every class needs a training image; the first three are the ones checked below.
    train_labels = [0, 99, 42, *(k for k in range(100) if k not in (0, 99, 42))]
    for file, labels in (("train", train_labels), ("test", [7, 3])):
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        _pickle(
            base / file, {"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}
        )
    _pickle(base / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    data = cifar100(str(tmp_path))
    assert data.num_classes == 100 and data.classes[42] == "class42"
    assert data.y_train.tolist()[:3] == [0, 99, 42] and data.x_test.shape == (2, 3, 32, 32)


def test_svhn_through_torchvision(tmp_path: Path, no_md5: None) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    images = {}
    for split, labels in (("train", [10, 1, 9, 10, *range(2, 9)]), ("test", [5, 10])):
        images[split] = rng.integers(0, 256, size=(32, 32, 3, len(labels)), dtype=np.uint8)
        y = np.array(labels, dtype=np.uint8)[:, None]
        savemat(tmp_path / f"{split}_32x32.mat", {"X": images[split], "y": y})
    data = svhn(str(tmp_path))
    assert data.classes == tuple(str(i) for i in range(10))
    assert data.y_train.tolist()[:4] == [0, 1, 9, 0] and data.y_test.tolist() == [5, 0]
    expected = torch.from_numpy(images["train"].transpose(3, 2, 0, 1).copy())
    assert data.x_train.dtype == torch.uint8 and torch.equal(data.x_train, expected)


@pytest.mark.parametrize(
    ("loader", "words"),
    [(cifar10, ("CIFAR-10 not found", "cifar10.npz")), (svhn, ("SVHN not found",))],
)
def test_missing_dataset_is_one_clear_line(tmp_path: Path, loader, words) -> None:
    with pytest.raises(UebenchError) as error:
        loader(str(tmp_path / "empty"))
    _assert_one_line(error, *words, "--data-root", "download=true")


# --------------------------------------------------------------------------- image folders


def _png_tree(root: Path, splits: dict[str, dict[str, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(4)
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                # Sizes, modes and formats differ on purpose: all must come out size x size RGB.
                pixels = rng.integers(0, 256, size=(10 + i, 14, 3), dtype=np.uint8)
                image = Image.fromarray(pixels).convert("L" if i % 2 else "RGB")
                image.save(root / split / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_folder_via_spec(tmp_path: Path) -> None:
    tree = tmp_path / "pets"
    _png_tree(tree, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}})
    data = load_dataset(f"folder:{tree}:size=8")
    assert data.name == "pets" and data.classes == ("cat", "dog")
    assert data.x_train.shape == (5, 3, 8, 8) and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [0, 0, 0, 1, 1] and data.y_test.tolist() == [0, 1, 1]
    assert folder(str(tree), size=8).x_test.shape == (3, 3, 8, 8)  # root when no path


def test_imagenet_subset_keeps_first_sorted_classes(tmp_path: Path) -> None:
    counts = {"n03": 1, "n01": 2, "n02": 1, "cat": 1}
    _png_tree(tmp_path / "a", {"train": counts, "val": counts, "test": {"cat": 3}})
    data = imagenet_subset(str(tmp_path / "a"), classes=2, size=12)
    assert data.name == "imagenet-subset" and data.classes == ("cat", "n01")
    assert data.x_train.shape == (3, 3, 12, 12) and data.y_train.tolist() == [0, 1, 1]
    assert data.y_test.tolist() == [0, 1, 1]  # from val/, not test/
    # A kept class without validation images (e.g. ILSVRC's flat val/) is an error.
    _png_tree(tmp_path / "b", {"train": counts, "val": {"n01": 1}})
    with pytest.raises(UebenchError) as error:
        imagenet_subset(str(tmp_path / "b"), classes=2)
    _assert_one_line(error, "cat")
    with pytest.raises(UebenchError) as error:
        imagenet_subset(str(tmp_path / "a"), classes=5)
    _assert_one_line(error, "5 classes asked for, train/ has 4")


def test_folder_errors(tmp_path: Path) -> None:
    _png_tree(tmp_path, {"train": {"cat": 1}, "test": {"cat": 1, "cow": 1}})
    with pytest.raises(UebenchError) as error:
        folder(str(tmp_path))
    _assert_one_line(error, "cow")
    with pytest.raises(UebenchError) as error:
        folder(None, path=str(tmp_path / "train"))
    _assert_one_line(error, "train/", "test/")


# --------------------------------------------------------------------------- npz


def test_npz_loads_and_resolves_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = _write_npz(
        tmp_path / "mine.npz",
        x_train=_images(np.random.default_rng(5), 20, (8, 8)),  # NHW grayscale
        x_test=_images(np.random.default_rng(6), 10, (8, 8)),
        y_train=(np.arange(20) % 3).astype(np.uint8)[:, None],  # (N, 1) labels
        y_test=(np.arange(10) % 3).astype(np.uint8),
    )
    data = load_dataset(f"npz:{tmp_path / 'mine.npz'}")
    assert data.name == "mine" and data.classes == ("0", "1", "2")
    assert data.image_shape == (1, 8, 8) and data.y_train.dtype == torch.int64
    assert torch.equal(data.x_test[:, 0], torch.from_numpy(arrays["x_test"]))
    monkeypatch.chdir(tmp_path)
    assert npz(None, path="mine.npz").fingerprint() == data.fingerprint()
    monkeypatch.chdir(tmp_path.parent)
    assert npz(str(tmp_path), path="mine.npz").fingerprint() == data.fingerprint()


def _bad_npz(kind: str, path: Path) -> None:
    if kind == "corrupt":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, 500, np.uint8).tobytes())
    elif kind == "truncated":
        _write_npz(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path.with_suffix(".npy").rename(path)
    elif kind == "missing-key":
        _write_npz(path, y_test=None)
    elif kind == "float-images":
        _write_npz(path, x_train=np.zeros((20, 32, 32, 3), np.float32))
    elif kind == "bad-shape":
        _write_npz(path, x_test=np.zeros((10, 32, 32, 5), np.uint8))
    elif kind == "float-labels":
        _write_npz(path, y_train=np.zeros(20, np.float64))
    elif kind == "count-mismatch":
        _write_npz(path, y_train=np.zeros(19, np.int64))
    elif kind == "object-classes":
        _write_npz(path, classes=np.array(["a", 1], dtype=object))
    elif kind == "label-range":
        _write_npz(path, classes=np.array(["a", "b"]))


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("absent", ("not found",)),
        ("corrupt", (".npz archive", "neither a zip")),
        ("truncated", (".npz archive",)),
        ("npy", ("single array",)),
        ("missing-key", ("y_test",)),
        ("float-images", ("x_train", "uint8", "float32")),
        ("bad-shape", ("x_test", "(N, H, W, 1 or 3)")),
        ("float-labels", ("y_train", "integer")),
        ("count-mismatch", ("20 train images", "(19,)")),
        ("object-classes", ("classes",)),
        ("label-range", ("labels outside 0..1",)),
    ],
)
def test_npz_errors_are_one_line(tmp_path: Path, kind: str, words: tuple[str, ...]) -> None:
    path = tmp_path / "bad.npz"
    _bad_npz(kind, path)
    with pytest.raises(UebenchError) as error:
        load_dataset(f"npz:{path}")
    _assert_one_line(error, *words)


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_stratified_subsets() -> None:
    data = load_dataset("digits:size=8", train_size=100, test_size=50, seed=3)
    assert len(data.x_train) == 100 and len(data.x_test) == 50
    full = load_dataset("digits:size=8")
    for part, whole in ((data.y_train, full.y_train), (data.y_test, full.y_test)):
        share = torch.bincount(whole, minlength=10) * len(part) / len(whole)
        assert ((torch.bincount(part, minlength=10) - share).abs() < 1).all()
    assert data.fingerprint() == load_dataset("digits:8", train_size=100, seed=3).fingerprint()
    assert data.fingerprint() != load_dataset("digits:8", train_size=100, seed=4).fingerprint()


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_CIFAR10 / "cifar10.npz").is_file(), reason="no offline CIFAR-10")
def test_real_cifar10_npz() -> None:
    data = load_dataset("cifar10", root=str(REAL_CIFAR10))
    assert data.x_train.shape == (50000, 3, 32, 32) and data.x_test.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.y_train).tolist() == [5000] * 10


def test_cluttered_digits_is_a_deterministic_rgb_set() -> None:
    first = load_dataset("cluttered-digits")
    again = load_dataset("cluttered-digits")
    assert first.x_train.shape[1:] == (3, 16, 16) and first.num_classes == 10
    assert len(first.y_train) + len(first.y_test) == 3 * 1797
    assert torch.equal(first.x_train, again.x_train)
    other = load_dataset("cluttered-digits:seed=1")
    assert not torch.equal(first.x_train, other.x_train)
    # The digit is faint: per-image contrast is far below plain digits' full 0..255 range.
    assert first.x_train.float().std() < 60
    with pytest.raises(UebenchError, match="size >= 8"):
        load_dataset("cluttered-digits:size=4")


def test_cluttered_digits_tests_on_unseen_glyphs() -> None:
    """Every copy of a source glyph lands on one side of the split, so the test set measures
    unseen handwriting; the earlier image split (kept as ``split=image`` to reproduce old
    numbers) put copies of one glyph on both sides."""
    from uebench.datasets import cluttered_digits_test_mask

    glyph_labels = torch.arange(50) % 10
    for split, leaks in (("glyph", False), ("image", True)):
        test = cluttered_digits_test_mask(glyph_labels, copies=3, split=split, seed=0)
        by_glyph = test.reshape(3, 50)  # image c * 50 + g is copy c of glyph g
        mixed = (by_glyph.any(0) & ~by_glyph.all(0)).any()
        assert bool(mixed) is leaks, split
        assert int(test.sum()) == 30  # 20% of the images either way
    data = load_dataset("cluttered-digits")
    assert len(data.y_test) == 3 * 359  # 20% of sklearn's 1797 glyphs, all three copies
