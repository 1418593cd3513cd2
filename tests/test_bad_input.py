"""Bad input is one line before any work: config types and ranges, non-finite spec options,
unusable output folders, plugins that fail while checking options or crafting, npz labels,
empty grids, and the wording of errors about run folders and unreadable records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from tiny_cli import TINY_CLI, one_line_error

from uebench.cli import main
from uebench.cli.diagnose import select_records
from uebench.countermeasure import Countermeasure
from uebench.data import from_numpy_nhwc
from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.method import Method
from uebench.poison import Poison
from uebench.registry import DEFENSES, METHODS
from uebench.spec import parse_float

TINY = [*TINY_CLI, "--no-progress"]


# --------------------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('epochs = "three"', ("epochs", "'three'", "integer")),
        ("epochs = 1.7", ("epochs", "1.7", "integer")),
        ("methods = 5", ("methods", "5", "list")),
        ("train_size = [1, 2]", ("train_size", "[1, 2]", "integer")),
        ("seeds = 0.5", ("seeds", "0.5", "integers")),
        ('save_models = "no"', ("save_models", "'no'", "true or false")),
        ("out = 3", ("out", "3", "string")),
    ],
)
def test_config_file_values_of_the_wrong_type_are_one_line(
    tmp_path: Path, capsys, monkeypatch, no_work, line: str, words: tuple[str, ...]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default out (runs/default) lands here if at all
    settings = {
        "dataset": '"digits:size=8"',
        "archs": '["smallcnn:width=4"]',
        "methods": '["clean"]',
        "epochs": "1",
        "train_size": "200",
        "test_size": "100",
        "device": '"cpu"',
        "progress": "false",
    }
    key, value = line.split(" = ", 1)
    settings[key] = value
    config = tmp_path / "grid.toml"
    config.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    message = one_line_error(capsys, main(["run", "--config", str(config)]))
    for word in words:
        assert word in message


def test_a_bad_config_value_is_rejected_even_when_a_flag_overrides_it(
    tmp_path: Path, capsys, monkeypatch, no_work
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "grid.toml"
    config.write_text('epochs = "three"\n')
    message = one_line_error(capsys, main(["run", "--config", str(config), "--epochs", "1"]))
    assert "grid.toml" in message and "'three'" in message


def test_api_keywords_are_checked_the_same_way() -> None:
    for options, words in (
        ({"epochs": "3"}, ("epochs", "'3'")),
        ({"progress": 1}, ("progress", "true or false")),
        ({"seeds": [0, 1.5]}, ("seeds", "1.5")),
        ({"lr": True}, ("lr", "True")),
    ):
        with pytest.raises(UebenchError) as error:
            GridConfig.from_dict(options)
        assert all(word in str(error.value) for word in words)
    # What is well typed is normalized: whole floats, comma lists, ranges, numpy scalars.
    config = GridConfig.from_dict(
        {"epochs": 2.0, "methods": "clean,random", "seeds": "0-2", "lr": np.float32(0.5)}
    )
    assert (config.epochs, config.methods, config.seeds) == (2, ["clean", "random"], [0, 1, 2])
    assert isinstance(config.epochs, int) and config.lr == 0.5
    assert GridConfig(methods="clean").methods == ["clean"]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--batch-size", "0"], ("batch_size", ">= 1", "0")),
        (["--lr", "-1"], ("lr", "> 0", "-1")),
        (["--lr", "nan"], ("lr", "finite", "nan")),
        (["--lr", "inf"], ("lr", "finite", "inf")),
        (["--epochs", "0"], ("epochs", ">= 1")),
        (["--test-size", "0"], ("test_size", ">= 1")),
        (["--threads", "0"], ("threads", ">= 1")),
        (["--seeds", "-1"], ("seeds", ">= 0", "-1")),
        (["--cpus-per-cell", "nan"], ("cpus_per_cell", "finite")),
        (["--gpus-per-cell", "-1"], ("gpus_per_cell", ">= 0")),
    ],
)
def test_out_of_range_hyperparameters_fail_before_any_work(
    tmp_path: Path, capsys, no_work, flags: list[str], words: tuple[str, ...]
) -> None:
    code = main(["run", *TINY, "--methods", "clean", "--out", str(tmp_path / "o"), *flags])
    message = one_line_error(capsys, code)
    assert all(word in message for word in words)


def test_spec_floats_must_be_finite() -> None:
    for text in ("nan", "inf", "-inf", "1e400", "inf/2"):
        with pytest.raises(UebenchError, match="not a finite number"):
            parse_float(text)
    assert math.isnan(parse_float("nan", finite=False))
    assert parse_float("8/255") == 8 / 255
    for registry, spec in ((DEFENSES, "advtrain:alpha=nan"), (METHODS, "emin:eps=inf")):
        with pytest.raises(UebenchError, match="not a finite number"):
            registry.resolve(spec)


# --------------------------------------------------------------------------- empty grids


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--methods", ""], ("methods is empty",)),
        (["--defenses", ""], ("defenses is empty",)),
        (["--seeds", ""], ("seeds", "no seed")),
        (["--seeds", "3-1"], ("3-1", "reversed", "1-3")),
    ],
)
def test_an_empty_grid_is_an_error_naming_what_is_empty(
    tmp_path: Path, capsys, no_work, flags: list[str], words: tuple[str, ...]
) -> None:
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(tmp_path / "o"), *flags]))
    assert all(word in message for word in words)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--methods", "clean,"], ("'clean,'", "empty item after the last comma")),
        (["--methods", ",clean"], ("',clean'", "empty item before the first comma")),
        (["--defenses", "none,"], ("'none,'", "empty item after the last comma")),
        (["--seeds", "0,"], ("'0,'", "empty item after the last comma")),
        (["--seeds", ",0"], ("',0'", "empty item before the first comma")),
    ],
)
def test_a_comma_at_either_end_of_a_list_is_an_error(
    tmp_path: Path, capsys, no_work, flags: list[str], words: tuple[str, ...]
) -> None:
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(tmp_path / "o"), *flags]))
    assert all(word in message for word in words), message


def test_ranges_and_bracketed_specs_still_parse_as_lists() -> None:
    config = GridConfig.from_dict(
        {"methods": "rem:source=[airbench:width=16],clean", "seeds": "0-2,5"}
    )
    assert config.methods == ["rem:source=[airbench:width=16]", "clean"]
    assert config.seeds == [0, 1, 2, 5]


@pytest.mark.parametrize(
    ("flag", "words"),
    [
        ("--train-size", ("--train-size 99999", "more than the 1438 training images")),
        ("--test-size", ("--test-size 99999", "more than the 359 test images")),
    ],
)
def test_a_subset_larger_than_the_dataset_names_its_flag_before_any_work(
    tmp_path: Path, capsys, no_work, flag: str, words: tuple[str, ...]
) -> None:
    argv = ["run", *TINY, "--methods", "clean", "--out", str(tmp_path / "o"), flag, "99999"]
    message = one_line_error(capsys, main(argv))
    assert all(word in message for word in words) and "dataset 'digits'" in message, message
    assert not list((tmp_path / "o" / "cells").glob("*.json"))


# --------------------------------------------------------------------------- output folders


def test_unusable_output_folders_fail_before_any_work(tmp_path: Path, capsys, no_work) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cases = [
        (["--out", str(blocker)], ("out", str(blocker), "is a file")),
        (["--out", str(blocker / "sub")], ("out", "cannot create", str(blocker))),
        (["--out", str(tmp_path / "o"), "--cache-dir", str(blocker)], ("cache_dir", "file")),
    ]
    if Path("/proc/self").is_dir():  # nothing can be created there, even by root
        cases.append((["--out", "/proc/uebench-out"], ("out", "cannot write to /proc")))
    for flags, words in cases:
        message = one_line_error(capsys, main(["run", *TINY, "--methods", "clean", *flags]))
        assert all(word in message for word in words), message
    assert blocker.read_text() == "not a folder"
    config = GridConfig(out=str(tmp_path / "fine" / "run"))
    config.check_folders()  # creates both folders (and cells/), leaves no probe behind
    assert [path.name for path in (tmp_path / "fine" / "run").iterdir()] == ["cells"]
    assert list((tmp_path / "fine" / "run" / "cells").iterdir()) == []
    assert list((tmp_path / "fine" / "cache").iterdir()) == []


# --------------------------------------------------------------------------- plugin failures


class Picky(Method):
    """Refuses any x but 1 in ``__init__``, as a plugin checking its options does."""

    def __init__(self, *, x: int = 1) -> None:
        if x != 1:
            raise ValueError(f"x must be 1, got {x}")
        self.x = x


class CrashesWhileCrafting(Method):
    """A plugin with a bug in ``craft``."""

    def __init__(self, *, x: int = 1) -> None:
        self.x = x

    def craft(self, data, ctx):
        raise ValueError("boom in craft")


class PickyDefense(Countermeasure):
    """Refuses strength 0 in ``__init__``."""

    def __init__(self, *, strength: float = 1.0) -> None:
        if strength == 0:
            raise ZeroDivisionError("strength must not be 0")
        self.strength = strength


class CrashesWhileTraining(Countermeasure):
    """A countermeasure whose augmentation has a bug."""

    def augment(self, x, y):
        raise IndexError("boom in augment")


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS._extra, "picky", Picky)
    monkeypatch.setitem(METHODS._extra, "crashy", CrashesWhileCrafting)
    monkeypatch.setitem(DEFENSES._extra, "picky-defense", PickyDefense)
    monkeypatch.setitem(DEFENSES._extra, "crashy-defense", CrashesWhileTraining)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--methods", "clean,picky:x=2"], ("method 'picky:x=2'", "ValueError: x must be 1")),
        (
            ["--methods", "clean", "--defenses", "none,picky-defense:strength=0"],
            ("countermeasure 'picky-defense:strength=0'", "ZeroDivisionError"),
        ),
    ],
)
def test_plugin_option_checks_run_before_any_cell(
    tmp_path: Path, capsys, no_work, plugins, flags: list[str], words: tuple[str, ...]
) -> None:
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(tmp_path / "o"), *flags]))
    assert all(word in message for word in words) and "checking its options" in message


def test_plugin_exceptions_while_crafting_or_training_name_the_plugin(
    tmp_path: Path, capsys, plugins, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["run", *TINY, "--out", str(tmp_path / "o"), "--methods", "crashy:x=2"]
    message = one_line_error(capsys, main(argv))
    assert "method 'crashy:x=2' failed while crafting: ValueError: boom in craft" in message
    # --debug (or UEBENCH_DEBUG=1) adds the traceback, down to the plugin's own frame.
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and 'raise ValueError("boom in craft")' in err
    assert err.strip().splitlines()[-1] == message
    monkeypatch.setenv("UEBENCH_DEBUG", "1")
    assert main(argv) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("UEBENCH_DEBUG")

    # Through the API the error keeps the plugin's exception as its cause.
    config = GridConfig(
        dataset="digits:size=8",
        archs=["smallcnn:width=4"],
        methods=["clean"],
        defenses=["crashy-defense"],
        epochs=1,
        train_size=200,
        test_size=100,
        device="cpu",
        progress=False,
        out=str(tmp_path / "t"),
    )
    with pytest.raises(UebenchError) as error:
        run_grid(config)
    assert "countermeasure 'crashy-defense'" in str(error.value)
    assert "failed while training: IndexError: boom in augment" in str(error.value)
    assert isinstance(error.value.__cause__, IndexError)


# --------------------------------------------------------------------------- npz labels


def _npz(path: Path, y_train, y_test, classes=None) -> str:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (len(y_train), 6, 6, 3), dtype=np.uint8),
        "y_train": np.asarray(y_train, dtype=np.int64),
        "x_test": rng.integers(0, 256, (len(y_test), 6, 6, 3), dtype=np.uint8),
        "y_test": np.asarray(y_test, dtype=np.int64),
    }
    if classes is not None:
        arrays["classes"] = np.array(classes)
    np.savez(path, **arrays)
    return f"npz:{path}"


THREE = [0, 1, 2] * 5


@pytest.mark.parametrize(
    ("y_train", "y_test", "classes", "words"),
    [
        ([*THREE, 250], [0, 1, 2], None, ("no training images of class", "3, 4,", "249")),
        (THREE, [0, 1, 2, 12], None, ("test labels outside 0..2", "12")),
        (THREE, [], None, ("no test images",)),
        ([], [0, 1, 2], None, ("no training images",)),
        ([0, 2, 4] * 5, [0, 2], None, ("no training images of class(es) 1, 3 ",)),
        (THREE, [0, 1], ["a", "b", "c", "d"], ("no training images of class(es) 3 (d)",)),
        ([*THREE, 5], [0], ["a", "b", "c", "d"], ("train labels outside 0..3", "5")),
    ],
)
def test_npz_labels_are_0_to_k_minus_1_with_every_class_in_training(
    tmp_path: Path, y_train, y_test, classes, words: tuple[str, ...]
) -> None:
    spec = _npz(tmp_path / "set.npz", y_train, y_test, classes)
    with pytest.raises(UebenchError) as error:
        load_dataset(spec)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


def test_good_labels_and_subsets_that_keep_every_class_still_load(tmp_path: Path) -> None:
    data = load_dataset(_npz(tmp_path / "ok.npz", THREE, [2, 2]))
    assert data.num_classes == 3 and data.classes == ("0", "1", "2")
    assert load_dataset("digits:size=8", train_size=10).num_classes == 10
    with pytest.raises(UebenchError, match="larger train_size") as error:
        load_dataset("digits:size=8", train_size=5)
    assert "5 of its 10 classes" in str(error.value)
    image = np.zeros((1, 4, 4), np.uint8)
    with pytest.raises(UebenchError, match="no test images"):
        from_numpy_nhwc("x", image, np.array([0]), image[:0], np.array([], np.int64))


# --------------------------------------------------------------------------- run folders


def test_certify_on_a_folder_says_what_it_takes(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    message = one_line_error(capsys, main(["certify", str(run)]))
    assert "RUN_DIR/cells/<id>.json" in message and "delete" not in message
    for name in ("aa", "bb", "cc", "dd"):
        (run / "cells" / f"{name}.json").write_text("{}")
    message = one_line_error(capsys, main(["certify", str(run)]))
    assert str(run / "cells" / "aa.json") in message and "1 more" in message
    assert "delete" not in message


def test_only_cache_entries_are_called_deletable(tmp_path: Path) -> None:
    junk = tmp_path / "mine.pt"
    junk.write_bytes(b"not a poison")
    with pytest.raises(UebenchError, match="corrupt") as error:
        Poison.load(junk)
    assert "delete" not in str(error.value)
    with pytest.raises(UebenchError, match="delete it to recompute"):
        Poison.load(junk, cache_entry=True)


def test_diagnose_does_not_promise_a_recomputation(tmp_path: Path, capsys) -> None:
    cells = tmp_path / "run" / "cells"
    cells.mkdir(parents=True)
    (cells / "0123456789abcdef.json").write_text(json.dumps({"cell_id": "0123"})[:7])
    with pytest.raises(UebenchError, match="no finished cell"):
        select_records(tmp_path / "run")
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("uebench: warning: record ") and "not valid JSON" in warning
    assert "`uebench run` recomputes it" in warning and "will be recomputed" not in warning
