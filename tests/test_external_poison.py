"""The method ``file``: poisons made elsewhere, in every format, checked before any training."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cli import TINY_CLI

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.grid.cell import load_cell_data
from uebench.identity import method_identity, poison_key
from uebench.method import CraftContext
from uebench.registry import METHODS
from uebench.storage.poison_files import published_sha256

EPS = 8 / 255


@pytest.fixture(scope="module")
def data():
    """The training set the tiny CLI grid loads (digits:size=8, 200 train images)."""
    return load_cell_data("digits:size=8", None, 200, 100)


@pytest.fixture(scope="module")
def poisoned(data) -> torch.Tensor:
    """The tiny training set with seeded ±8/255 noise, as published uint8 N×C×H×W images."""
    generator = torch.Generator().manual_seed(0)
    steps = torch.randint(-8, 9, data.x_train.shape, generator=generator)
    return (data.x_train.int() + steps).clamp(0, 255).to(torch.uint8)


def craft(spec: str, data):
    """The ``file`` method's poison for ``spec``, as the harness crafts it."""
    method = METHODS.resolve(spec).without_common().build()
    return method.craft(data, CraftContext(torch.device("cpu"), progress=False))


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def write_folder(root: Path, data, images: torch.Tensor, suffix: str = ".png") -> Path:
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, data.y_train.tolist(), strict=True)):
        folder = root / "train" / data.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{index}{suffix}")
    return root


def test_npz_uint8_nhwc_images(tmp_path, data, poisoned):
    path = tmp_path / "p.npz"
    np.savez(path, x_train=nhwc(poisoned), y_train=data.y_train.numpy())
    poison = craft(f"file:{path}:eps=8/255", data)
    assert torch.equal(poison.apply(data.x_train), poisoned)
    assert poison.threat.describe() == "L∞ ≤ 8/255"
    norms = poison.meta["norms"]
    assert norms["linf"]["max"] == pytest.approx(8 / 255)
    assert 0 < norms["l2"]["mean"] <= norms["l2"]["max"]
    assert norms["l0"]["max"] <= 64
    assert poison.meta["published_sha256"] == published_sha256(poisoned, data.y_train)
    assert craft(f"file:{path}:eps=8/255", data).content_hash() == poison.content_hash()


def test_npy_float_nchw_images_and_pt(tmp_path, data, poisoned):
    npy = tmp_path / "p.npy"
    np.save(npy, poisoned.float().numpy() / 255.0)
    assert torch.equal(craft(f"file:{npy}", data).apply(data.x_train), poisoned)
    pt = tmp_path / "p.pt"
    torch.save({"x_train": poisoned, "y_train": data.y_train}, pt)
    poison = craft(f"file:{pt}", data)
    assert torch.equal(poison.apply(data.x_train), poisoned)
    assert poison.threat.describe() == "unbounded"  # nothing declared: measured, not bounded


def test_perturbations_and_threat(tmp_path, data, poisoned):
    delta = (poisoned.float() - data.x_train.float()) / 255.0
    path = tmp_path / "d.npz"
    np.savez(path, delta=delta.numpy())
    poison = craft(f"file:{path}:threat=[l2:1.0]", data)
    assert torch.equal(poison.apply(data.x_train), poisoned)
    assert poison.threat.describe() == "L2 ≤ 1"
    assert poison.meta["file_content"] == "delta"


def test_png_and_jpeg_folders(tmp_path, data, poisoned):
    png = write_folder(tmp_path / "png", data, poisoned)
    poison = craft(f"file:{png}:eps=8/255", data)
    assert torch.equal(poison.apply(data.x_train), poisoned)
    # JPEG is lossy: read as decoded, which is what the file publishes.
    jpeg = write_folder(tmp_path / "jpeg", data, poisoned, ".jpg")
    poison = craft(f"file:{jpeg}", data)
    from PIL import Image

    first = jpeg / "train" / data.classes[int(data.y_train[0])] / "0.jpg"
    with Image.open(first) as image:
        decoded = torch.from_numpy(np.asarray(image.convert("L")).copy())
    assert torch.equal(poison.apply(data.x_train)[0, 0], decoded)


def test_identity_follows_the_content(tmp_path, data, poisoned):
    path = tmp_path / "p.npz"
    np.savez(path, x_train=nhwc(poisoned))
    key = poison_key(f"file:{path}", data.fingerprint(), None)
    moved = tmp_path / "elsewhere.npz"
    shutil.copy(path, moved)
    assert poison_key(f"file:{moved}", data.fingerprint(), None) == key
    assert "path" not in method_identity(f"file:{moved}")["options"]
    edited = poisoned.clone()
    edited[0, 0, 0, 0] ^= 1
    np.savez(moved, x_train=nhwc(edited))
    assert poison_key(f"file:{moved}", data.fingerprint(), None) != key


def test_grid_records_the_file(tmp_path, data, poisoned, capsys):
    path = tmp_path / "p.npz"
    np.savez(path, x_train=nhwc(poisoned), y_train=data.y_train.numpy())
    out = tmp_path / "run"
    code = main(["run", *TINY_CLI, "--methods", f"file:{path}:eps=8/255", "--defenses", "none",
                 "--out", str(out), "--no-progress", "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (record_file,) = (out / "cells").glob("*.json")
    record = json.loads(record_file.read_text())
    assert record["poison"]["file_sha256"] == method_identity(f"file:{path}")["options"]["sha256"]
    assert record["threat"] == "L∞ ≤ 8/255"
    assert record["poison"]["poisoned_fraction"] > 0.9
    assert 0 <= record["final_acc"] <= 100


def _run_bad(tmp_path: Path, spec: str, capsys) -> str:
    """Run a grid of one bad ``file`` spec; return its one error line (and check no record)."""
    out = tmp_path / "bad"
    code = main(["run", *TINY_CLI, "--methods", spec, "--defenses", "none", "--out", str(out),
                 "--no-progress", "--threads", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert not list((out / "cells").glob("*.json")) if (out / "cells").exists() else True
    return err


def test_bad_inputs_end_in_one_line(tmp_path, data, poisoned, capsys):
    missing = tmp_path / "missing.npz"
    assert "does not exist" in _run_bad(tmp_path, f"file:{missing}", capsys)

    short = tmp_path / "short.npz"
    np.savez(short, x_train=nhwc(poisoned[:150]))
    assert "has 150 images, the training set the grid loads has 200" in _run_bad(
        tmp_path, f"file:{short}", capsys
    )

    shuffled = tmp_path / "shuffled.npz"
    np.savez(shuffled, x_train=nhwc(poisoned[torch.randperm(200)]))
    assert "not in its order" in _run_bad(tmp_path, f"file:{shuffled}", capsys)

    relabelled = tmp_path / "labels.npz"
    np.savez(relabelled, x_train=nhwc(poisoned), y_train=(data.y_train.numpy() + 1) % 10)
    assert "labels differ" in _run_bad(tmp_path, f"file:{relabelled}", capsys)

    nan = tmp_path / "nan.npy"
    floats = poisoned.float().numpy() / 255.0
    floats[3, 0, 2, 2] = np.nan
    np.save(nan, floats)
    assert "NaN" in _run_bad(tmp_path, f"file:{nan}", capsys)

    loud = poisoned.clone()
    loud[7] = (data.x_train[7].int() + 20).clamp(0, 255).to(torch.uint8)
    beyond = tmp_path / "beyond.npz"
    np.savez(beyond, x_train=nhwc(loud))
    err = _run_bad(tmp_path, f"file:{beyond}:eps=8/255", capsys)
    assert "image 7" in err and "beyond the declared budget L∞ ≤ 8/255" in err

    shape = tmp_path / "shape.npz"
    np.savez(shape, x_train=np.zeros((200, 9, 9, 1), np.uint8))
    assert "fit neither" in _run_bad(tmp_path, f"file:{shape}", capsys)

    wrong_class = write_folder(tmp_path / "classes", data, poisoned)
    (wrong_class / "train" / "0").rename(wrong_class / "train" / "zero")
    assert "not classes of" in _run_bad(tmp_path, f"file:{wrong_class}", capsys)


# torch warns about the pickle protocol of the file it is refusing: expected here.
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_are_never_opened(tmp_path, capsys):
    sentinel = tmp_path / "ran"

    class Bomb:
        def __reduce__(self):
            return (sentinel.touch, ())

    for name in ("p.pkl", "p.npy", "p.pt"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"x_train": Bomb()}))
        err = _run_bad(tmp_path, f"file:{path}", capsys)
        assert "pickle" in err or "weights_only" in err, err
    object_array = tmp_path / "objects.npz"
    np.savez(object_array, x_train=np.array([Bomb()], dtype=object))
    assert "pickled objects" in _run_bad(tmp_path, f"file:{object_array}", capsys)
    assert not sentinel.exists()


@pytest.mark.parametrize("spec", ["file", "file:", "file:path="])
def test_a_file_without_a_path_needs_the_path_option(tmp_path, monkeypatch, capsys, spec):
    monkeypatch.chdir(tmp_path)  # an empty path once read the current folder as the poison
    err = _run_bad(tmp_path, spec, capsys)
    assert err.startswith("uebench: error: method 'file' needs option 'path'"), err


def test_options_are_checked(tmp_path):
    with pytest.raises(UebenchError, match="method 'file' needs option 'path'"):
        METHODS.build("file")
    path = tmp_path / "p.npz"
    np.savez(path, x_train=np.zeros((1, 8, 8, 1), np.uint8))
    with pytest.raises(UebenchError, match="not both"):
        METHODS.build(f"file:{path}:eps=8/255:threat=[l2:1]")
    with pytest.raises(UebenchError, match="norm must be one of"):
        METHODS.build(f"file:{path}:threat=[l3:1]")
    (tmp_path / "p.csv").write_text("1,2\n")
    with pytest.raises(UebenchError, match="unknown poison format"):
        METHODS.build(f"file:{tmp_path / 'p.csv'}")
