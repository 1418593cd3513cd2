"""``uebench export``: a cell's poisoned training set out, and back in through ``file:``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_cli import TINY_CLI

from uebench.cli import main

# Four epochs of batches of 32 (the last flags win): accuracy well above chance, so equal
# accuracies mean something.
RUN = [*TINY_CLI, "--epochs", "4", "--batch-size", "32", "--defenses", "none", "--seeds", "0",
       "--threads", "1", "--no-progress"]  # fmt: skip


def records(out: Path) -> dict[str, dict]:
    """The grid's records by method spec as the user wrote it."""
    found = {}
    for path in (out / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        found[record["method"]] = {**record, "path": str(path)}
    return found


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("original")
    methods = "random,random:form=class:classes=0,1"
    assert main(["run", *RUN, "--methods", methods, "--out", str(out)]) == 0
    return records(out)


@pytest.mark.parametrize("form", ["png", "npz"])
def test_round_trip(tmp_path, original, form, capsys):
    """Exported and read back by ``file:``: the same published images and, on the same seed
    and threads, the same accuracy as the original cells."""
    exported = {}
    for label, record in original.items():
        target = tmp_path / (f"{record['cell_id']}.npz" if form == "npz" else record["cell_id"])
        assert main(["export", record["path"], str(target), "--format", form]) == 0
        exported[label] = target
    assert "exported 200 training images" in capsys.readouterr().out
    specs = {f"file:{target}": label for label, target in exported.items()}
    out = tmp_path / "again"
    assert main(["run", *RUN, "--methods", ",".join(specs), "--out", str(out)]) == 0
    again = records(out)
    for spec, label in specs.items():
        first, second = original[label], again[spec]
        target = exported[label]
        manifest_path = (
            target / "manifest.json" if form == "png" else Path(f"{target}.manifest.json")
        )
        manifest = json.loads(manifest_path.read_text())
        assert manifest["poison_hash"] == first["poison_hash"]  # the cell's own poison went out
        assert manifest["method_spec"] == first["method_spec"]
        assert manifest["published_sha256"] == second["poison"]["published_sha256"]
        assert second["final_acc"] == first["final_acc"]
        assert first["final_acc"] > 15  # chance is 10%
        curve = lambda r: [(e["train_loss"], e["test_acc"]) for e in r["history"]]  # noqa: E731
        assert curve(second) == curve(first)
        assert second["poison_hash"] != first["poison_hash"]  # file poisons cite their own
        assert second["poison"]["file_sha256"]
    if form == "png":
        target = exported["random:form=class:classes=0,1"]
        manifest = json.loads((target / "manifest.json").read_text())
        # Only classes 0 and 1 carry noise: 2 of the 10 digit classes.
        assert 0 < manifest["poisoned_images"] < 100
        assert sorted(p.name for p in (target / "train").iterdir()) == [str(i) for i in range(10)]
        assert len(list(target.glob("train/*/*.png"))) == 200


def test_npz_export_is_a_dataset(tmp_path, original):
    """The .npz export also loads as ``--dataset npz:FILE``: poisoned training, clean test."""
    record = original["random"]
    target = tmp_path / "p.npz"
    assert main(["export", record["path"], str(target), "--format", "npz"]) == 0
    with np.load(target, allow_pickle=False) as archive:
        assert archive["x_train"].shape == (200, 8, 8, 1)
        assert json.loads(str(archive["manifest"]))["cell_id"] == record["cell_id"]
    from uebench.datasets import load_dataset

    data = load_dataset(f"npz:{target}", None, None, None)
    assert len(data.y_train) == 200 and len(data.y_test) == 100


def test_bad_export_inputs(tmp_path, original, capsys):
    record = original["random"]["path"]

    def error(*argv: str) -> str:
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    assert "does not exist" in error(str(tmp_path / "none.json"), str(tmp_path / "o"))
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    assert "not a uebench cell record" in error(str(bogus), str(tmp_path / "o"))
    assert "writes a .npz file" in error(record, str(tmp_path / "o"), "--format", "npz")
    (tmp_path / "taken").mkdir()
    assert "--force" in error(record, str(tmp_path / "taken"))
    tampered = json.loads(Path(record).read_text())
    tampered["poison_hash"] = "0" * 64
    changed = tmp_path / "tampered.json"
    changed.write_text(json.dumps(tampered))
    assert "nothing exported" in error(str(changed), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
