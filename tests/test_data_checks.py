"""What only the data can tell is checked before the first cell: a file poison's images against
the training set and a filter's channel count fail in one line, with no cell run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_cli import TINY_CLI, one_line_error

from uebench.cli import main
from uebench.countermeasure import Countermeasure
from uebench.errors import UebenchError
from uebench.grid import GridConfig, data_checks
from uebench.grid.cell import load_cell_data
from uebench.grid.data_checks import check_cells_against_data
from uebench.registry import METHODS


def test_grayscale_on_one_channel_images_fails_before_any_cell(tmp_path: Path, capsys, no_work):
    # digits:size=8 is grayscale: one channel.  The none cells come first in the grid.
    argv = ["run", *TINY_CLI, "--methods", "clean,random", "--defenses", "none,grayscale"]
    code = main([*argv, "--out", str(tmp_path / "o"), "--no-progress"])
    line = one_line_error(capsys, code)
    assert "grayscale needs 3-channel (colour) images, the data has 1" in line


def test_a_file_poison_of_the_wrong_size_fails_before_the_methods_before_it(
    tmp_path: Path, capsys, no_work
):
    data = load_cell_data("digits:size=8", None, 200, 100)
    path = tmp_path / "short.npz"
    images = data.x_train[:150].permute(0, 2, 3, 1).numpy()
    np.savez(path, x_train=images, y_train=data.y_train[:150].numpy())
    methods = f"clean,random,file:{path}:eps=8/255"
    code = main(["run", *TINY_CLI, "--methods", methods, "--out", str(tmp_path / "o")])
    line = one_line_error(capsys, code)
    assert "has 150 images, the training set the grid loads has 200" in line


class Refuses(Countermeasure):
    def check_data(self, data) -> None:
        raise ValueError(f"not {data.name}")


def test_each_spec_is_checked_once_and_a_plugin_error_names_it(monkeypatch):
    config = GridConfig(
        dataset="digits:size=8", methods=["clean", "random"], defenses=["none", "jpeg"],
        archs=["smallcnn:width=4"], epochs=1, train_size=200, test_size=100, out="unused",
    )  # fmt: skip
    cells = config.cells()
    assert len(cells) == 4
    data = load_cell_data("digits:size=8", None, 200, 100)
    seen: list[str] = []

    def accepting(spec: str) -> Countermeasure:
        seen.append(spec)
        return Countermeasure()

    monkeypatch.setattr(data_checks, "build_countermeasure", accepting)
    check_cells_against_data(cells, data)
    assert sorted(seen) == ["jpeg", "none"]
    monkeypatch.setattr(
        data_checks,
        "build_countermeasure",
        lambda s: Refuses() if s == "jpeg" else Countermeasure(),
    )
    with pytest.raises(UebenchError, match=r"countermeasure 'jpeg' failed while checking it "):
        check_cells_against_data(cells, data)


def test_a_poison_already_in_the_cache_is_not_checked_again(tmp_path: Path, monkeypatch):
    external = METHODS.get("file")  # the class the registry builds
    data = load_cell_data("digits:size=8", None, 200, 100)
    path = tmp_path / "same.npz"
    np.savez(path, x_train=data.x_train.permute(0, 2, 3, 1).numpy(), y_train=data.y_train.numpy())
    checked: list[str] = []
    original = external.check_data

    def counting(self, data) -> None:
        checked.append(self.path)
        original(self, data)

    monkeypatch.setattr(external, "check_data", counting)
    argv = ["run", *TINY_CLI, "--methods", f"file:{path}", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    assert checked == [str(path)]
    # A new cell of the same poison: crafted already, so read from the cache unchecked.
    assert main([*argv, "--out", str(tmp_path / "o"), "--defenses", "jpeg"]) == 0
    assert checked == [str(path)]
