"""Issue 26: the outside probe's findings, one test per case, in the probe's eight groups.

1. no silent wrong result (a ``file:`` poison replaced mid-grid, records trusted as found),
2. no data loss from ``export --force``, 3. nor from a results folder deleted mid-run,
4. paths only from the command line, 5. bad input refused in one line, 6. no tracebacks,
7. clear lines, 8. no leftovers.  Read-only places are simulated with ``/proc`` or a
monkeypatch where the tests run as root (chmod does not stop root).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cli import TINY_CLI, one_line_error

import uebench.cli.export as export_cli
import uebench.files
import uebench.grid.runner as runner
from uebench.cli import main
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.files import this_host
from uebench.grid import GridConfig, ResultStore, run_grid
from uebench.grid.cell import load_cell_data
from uebench.identity import cache_key
from uebench.method import CraftContext
from uebench.registry import METHODS
from uebench.results.leaderboard import cells_frame, leaderboard, read_records
from uebench.storage.poison_files import read_poison_file
from uebench.storage.records import read_record

TINY = [*TINY_CLI, "--no-progress"]
#: How an export's staging folder is named (``uebench.files.STAGING_PREFIX``).
STAGING_PREFIX = ".uebench-export-tmp-"


@pytest.fixture(scope="module")
def data() -> ImageData:
    """The training set the tiny grid loads (digits:size=8, 200 training images)."""
    return load_cell_data("digits:size=8", None, 200, 100)


def noisy(data: ImageData, seed: int) -> np.ndarray:
    """The training images with seeded ±4/255 noise, uint8 N×H×W×C (a ``file:`` poison)."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.randint(-4, 5, data.x_train.shape, generator=generator)
    published = (data.x_train.int() + steps).clamp(0, 255).to(torch.uint8)
    return published.permute(0, 2, 3, 1).numpy()


def craft_file(spec: str, data: ImageData):
    method = METHODS.resolve(spec).without_common().build()
    return method.craft(data, CraftContext(torch.device("cpu"), progress=False))


def records_of(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((out / "cells").glob("*.json"))]


def sound_record(cell_id: str = "c0", **fields) -> dict:
    """A minimal record every reader accepts (no config: keys come from specs)."""
    return {
        "cell_id": cell_id,
        "dataset": "digits",
        "method": "emin",
        "defense": "none",
        "arch": "smallcnn",
        "seed": 0,
        "epochs": 1,
        "final_acc": 50.0,
        "best_acc": 50.0,
        "selected_acc": 50.0,
        "best_epoch": 1,
        "selected_epoch": 1,
        "history": [{"epoch": 1, "train_loss": 1.0, "train_acc": 40.0, "test_acc": 50.0}],
        **fields,
    }


def write_records(run: Path, *records: dict, name: str | None = None) -> None:
    """Records as ``RUN/cells/<cell id>.json`` (or ``<name>.json``)."""
    (run / "cells").mkdir(parents=True, exist_ok=True)
    for record in records:
        (run / "cells" / f"{name or record['cell_id']}.json").write_text(json.dumps(record))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-cell run (random noise), for the export and resume tests."""
    out = tmp_path_factory.mktemp("run") / "run"
    args = ["run", *TINY, "--methods", "random", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    return out


def after_cell(monkeypatch, count: int, action) -> None:
    """Do ``action()`` while the grid runs: once its ``count``-th cell has trained, before that
    cell's record is written."""
    real, ran = runner.run_cell, []

    def run_then_act(*args, **kwargs):
        record = real(*args, **kwargs)
        ran.append(1)
        if len(ran) == count:
            action()
        return record

    monkeypatch.setattr(runner, "run_cell", run_then_act)


def record_path(run: Path) -> Path:
    (path,) = (run / "cells").glob("*.json")
    return path


# --------------------------------------------------------------------------- 1: wrong results


def test_a_file_poison_replaced_mid_grid_is_refused_and_the_rerun_keeps_to_the_old_file(
    tmp_path, tiny_grid, data, monkeypatch
) -> None:
    poison = tmp_path / "p.npz"
    np.savez(poison, x_train=noisy(data, 0))
    old = poison.read_bytes()
    grid = {**tiny_grid, "methods": [f"file:{poison}"], "seeds": [0, 1, 2],
            "out": str(tmp_path / "o")}  # fmt: skip
    # Another poison at the same path once the first cell has run.
    after_cell(monkeypatch, 1, lambda: np.savez(poison, x_train=noisy(data, 1)))
    with pytest.raises(UebenchError, match="changed since the grid was planned") as error:
        run_grid(GridConfig(**grid))
    assert "\n" not in str(error.value)
    assert len(records_of(tmp_path / "o")) == 1  # only the cell that ran on the old file
    poison.write_bytes(old)
    table = run_grid(GridConfig(**grid))
    import hashlib

    planned = hashlib.sha256(old).hexdigest()
    assert sorted(table["seed"]) == [0, 1, 2]
    assert {r["poison"]["file_sha256"] for r in records_of(tmp_path / "o")} == {planned}


def test_a_poison_file_swapped_under_its_size_and_time_is_refused_when_read(tmp_path, data) -> None:
    poison = tmp_path / "p.npy"
    np.save(poison, noisy(data, 0))
    method = METHODS.resolve(f"file:{poison}").without_common().build()  # hashed here
    before = poison.stat()
    np.save(poison, noisy(data, 1))  # same size; the time put back as it was
    os.utime(poison, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(UebenchError, match="changed while it was being read"):
        method.craft(data, CraftContext(torch.device("cpu"), progress=False))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        ({"final_acc": 250.0}, "'final_acc' is 250, outside [0, 100]"),
        ({"history": ["a", "b"]}, "'history' is not a list of per-epoch objects"),
        ({"history": [{"epoch": 1, "test_acc": "high"}]}, "'history' holds test_acc="),
        ({"confusion_matrix": "[[1, 2]]"}, "'confusion_matrix' is not a list of lists"),
        ({"train_size": [100]}, "'train_size' is [100], not a non-negative integer"),
        ({"method": '=HYPERLINK("http://x")', "method_spec": "emin"}, "'method' is"),
        ({"cell_id": "other"}, "not 'c0' (its file name)"),
        ({"config": {"identity": {"seed": 1}}}, "does not hash to its cell id"),
    ],
)
def test_a_record_of_the_wrong_type_or_range_is_named_in_one_line(
    tmp_path, capsys, edit, problem
) -> None:
    write_records(tmp_path / "run", {**sound_record(), **edit}, name="c0")
    path = tmp_path / "run" / "cells" / "c0.json"
    with pytest.raises(UebenchError, match=re.escape(problem)):
        read_record(path, "c0")
    for command in (["leaderboard"], ["report", "-o", str(tmp_path / "rep")]):
        message = one_line_error(capsys, main([*command, str(tmp_path / "run")]))
        assert str(path) in message


def test_diagnose_names_a_wrong_typed_record_and_goes_on(tmp_path, capsys) -> None:
    good = sound_record("good", classes=["0", "1"], per_class_acc=[50.0, 50.0],
                        confusion_matrix=[[1, 1], [1, 1]])  # fmt: skip
    write_records(tmp_path / "run", good, {**sound_record("bad"), "confusion_matrix": "x"})
    assert main(["diagnose", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "cell good" in captured.out and "cell bad" not in captured.out
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and "bad.json" in warnings[0] and "confusion_matrix" in warnings[0]


def test_a_hand_edited_record_is_recomputed_on_resume(tmp_path, tiny_grid, capsys) -> None:
    config = GridConfig(**{**tiny_grid, "methods": ["clean"], "out": str(tmp_path / "o")})
    run_grid(config)
    (path,) = (tmp_path / "o" / "cells").glob("*.json")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "final_acc": 250.0, "method": "=HYPERLINK(1)"}))
    capsys.readouterr()
    table = run_grid(config)
    assert list(table["method"]) == ["clean"] and 0 <= table["final_acc"].iloc[0] <= 100
    assert "recomputed" in capsys.readouterr().err
    assert "HYPERLINK" not in (tmp_path / "o" / "results.csv").read_text()


def test_the_run_table_names_methods_as_the_grid_does(tmp_path, tiny_grid) -> None:
    grid = {**tiny_grid, "out": str(tmp_path / "o")}
    run_grid(GridConfig(**grid, methods=["random:form=sample"]))
    table = run_grid(GridConfig(**grid, methods=["random"]))  # the same cell, other spelling
    assert list(table["method"]) == ["random"]


def test_text_that_looks_like_a_formula_is_escaped_in_every_csv(tmp_path, capsys) -> None:
    formula = '=HYPERLINK("http://example.com","x")'
    write_records(
        tmp_path / "run",
        sound_record("a", method=formula),
        sound_record("b", method="clean", final_acc=90.0),
        sound_record("c", method="@SUM(1)", defense="-cutout"),
    )
    assert main(["leaderboard", str(tmp_path / "run"), "-o", str(tmp_path / "b.csv")]) == 0
    ResultStore(tmp_path / "run").write_csv()
    for name in ("b.csv", "b.pivot.csv", "run/results.csv"):
        text = (tmp_path / name).read_text()
        assert "'=HYPERLINK" in text and "'@SUM(1)" in text, name
        assert ",=" not in text and ",@" not in text and ",-cutout" not in text, name


# --------------------------------------------------------------------------- 2: export --force


def test_export_force_never_replaces_the_run_folder(tiny_run, capsys) -> None:
    before = sorted(p.name for p in tiny_run.iterdir())
    record = record_path(tiny_run)
    message = one_line_error(capsys, main(["export", str(record), str(tiny_run), "--force"]))
    assert "export elsewhere" in message
    assert sorted(p.name for p in tiny_run.iterdir()) == before and record.exists()


def test_export_force_replaces_only_an_earlier_export(tiny_run, tmp_path, capsys) -> None:
    record = str(record_path(tiny_run))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    message = one_line_error(capsys, main(["export", record, str(mine), "--force"]))
    assert "not an earlier png export" in message and "notes.txt" in message
    assert (mine / "notes.txt").read_text() == "keep me"
    other_run = tmp_path / "other"
    (other_run / "cells").mkdir(parents=True)
    message = one_line_error(capsys, main(["export", record, str(other_run), "--force"]))
    assert "results folder" in message and (other_run / "cells").is_dir()
    own_npz = tmp_path / "data.npz"
    np.savez(own_npz, x=np.zeros(3))
    message = one_line_error(
        capsys, main(["export", record, str(own_npz), "--format", "npz", "--force"])
    )
    assert "not an earlier npz export" in message and own_npz.exists()
    for form, target in (("png", tmp_path / "png"), ("npz", tmp_path / "p.npz")):
        assert main(["export", record, str(target), "--format", form]) == 0
        assert main(["export", record, str(target), "--format", form]) == 2
        assert "pass --force" in capsys.readouterr().err
        assert main(["export", record, str(target), "--format", form, "--force"]) == 0


# --------------------------------------------------------------------------- 3: vanished --out


def test_a_results_folder_deleted_mid_run_is_noticed_and_its_cells_recomputed(
    tmp_path, tiny_grid, monkeypatch, capsys
) -> None:
    out = tmp_path / "o"
    after_cell(monkeypatch, 2, lambda: shutil.rmtree(out))  # `rm -rf OUT` while the grid runs
    grid = {**tiny_grid, "methods": ["clean"], "seeds": [0, 1, 2, 3], "out": str(out)}
    table = run_grid(GridConfig(**grid))
    assert sorted(table["seed"]) == [0, 1, 2, 3]
    assert len(records_of(out)) == 4
    warnings = [line for line in capsys.readouterr().err.splitlines() if "lost" in line]
    assert len(warnings) == 1 and "1 of the grid's 4 finished cells" in warnings[0]


# --------------------------------------------------------------------------- 4: paths


def test_export_takes_no_place_from_the_record(tiny_run, tmp_path) -> None:
    source = json.loads(record_path(tiny_run).read_text())
    elsewhere = tmp_path / "system-folder"
    source["config"]["cache_dir"] = str(elsewhere / "cache")
    source["config"]["data_root"] = str(elsewhere / "data")
    edited = tmp_path / "run" / "cells" / record_path(tiny_run).name
    edited.parent.mkdir(parents=True)
    edited.write_text(json.dumps(source))
    assert main(["export", str(edited), str(tmp_path / "out")]) == 0
    assert list((tmp_path / "cache").glob("*.pt"))  # beside the run folder, as run's default
    flag = tmp_path / "flagged"
    assert main(["export", str(edited), str(tmp_path / "o2"), "--cache-dir", str(flag)]) == 0
    assert list(flag.glob("*.pt"))  # where the flag said
    assert not elsewhere.exists()


# --------------------------------------------------------------------------- 5: bad input


def test_the_order_check_refuses_one_swapped_pair(tmp_path, data) -> None:
    images = noisy(data, 0)
    path = tmp_path / "p.npy"
    np.save(path, images)
    craft_file(f"file:{path}", data)  # in order: accepted
    swapped = images.copy()
    swapped[[3, 150]] = swapped[[150, 3]]
    np.save(path, swapped)
    with pytest.raises(UebenchError, match=r"2 of its 200 images \(first: image 3\)"):
        craft_file(f"file:{path}", data)


def test_the_order_check_refuses_relabelled_images(tmp_path, data) -> None:
    images = noisy(data, 0)
    labels = data.y_train.numpy()
    other = int(np.nonzero(labels != labels[10])[0][0])
    images[10] = images[other]  # image 10 shows another class's digit
    path = tmp_path / "p.npy"
    np.save(path, images)
    with pytest.raises(UebenchError, match="nearer another clean image"):
        craft_file(f"file:{path}", data)


def test_float_labels_are_refused_not_truncated(tmp_path, data) -> None:
    path = tmp_path / "p.npz"
    labels = data.y_train.numpy().astype(np.float64)
    np.savez(path, x_train=noisy(data, 0), y_train=labels)
    craft_file(f"file:{path}", data)  # whole-valued floats are labels
    labels[7] += 0.5
    np.savez(path, x_train=noisy(data, 0), y_train=labels)
    with pytest.raises(UebenchError, match=r"labels must be whole numbers.*image 7"):
        craft_file(f"file:{path}", data)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--seeds", "0,,1"], "empty item between two commas"),
        (["--seeds", "1_000"], "plain digits"),
        (["--address", "auto"], "--address is for --backend ray"),
        (["--cpus-per-cell", "2"], "--cpus-per-cell is for --backend ray"),
        (["--gpus-per-cell", "1"], "--gpus-per-cell is for --backend ray"),
    ],
)
def test_flags_the_grid_would_ignore_or_misread_are_one_line(
    tmp_path, capsys, no_work, flags, said
) -> None:
    args = ["run", *TINY, "--methods", "clean", "--out", str(tmp_path / "o"), *flags]
    assert said in one_line_error(capsys, main(args))


def test_a_reference_with_an_unknown_metric_is_an_error(tmp_path, capsys) -> None:
    write_records(tmp_path / "run", sound_record("a", method="clean", final_acc=90.0))
    references = tmp_path / "refs.csv"
    references.write_text(
        "id,where,dataset,method,defense,arch,metric,value,tolerance\n"
        "r1,here,digits,clean,none,smallcnn,finall_acc,90,1\n"
    )
    message = one_line_error(
        capsys, main(["compare", str(tmp_path / "run"), "-r", str(references)])
    )
    assert "metric 'finall_acc'" in message and "final_acc" in message


def test_a_test_set_smaller_than_the_class_count_is_refused(tmp_path, capsys) -> None:
    args = ["run", *TINY, "--methods", "clean", "--out", str(tmp_path / "o"), "--test-size", "5"]
    message = one_line_error(capsys, main(args))
    assert "test subset of 5 images" in message and "10 classes" in message
    assert not list((tmp_path / "o" / "cells").glob("*.json"))


def test_an_npz_dataset_with_a_class_name_twice_is_refused(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x_train=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8),
        y_test=np.array([0, 1, 2]),
        classes=np.array(["cat", "dog", "cat"]),
    )
    with pytest.raises(UebenchError, match="class name\\(s\\) 'cat' used for more than one"):
        load_cell_data(f"npz:{tmp_path / 'd.npz'}", None, None, None)


# --------------------------------------------------------------------------- 6: no tracebacks


def no_crafting(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the poison was recreated before the place was checked")

    monkeypatch.setattr(export_cli, "craft_poison", refuse)


def test_export_to_an_unusable_place_is_one_line_before_crafting(
    tiny_run, tmp_path, capsys, monkeypatch
) -> None:
    no_crafting(monkeypatch)
    record = str(record_path(tiny_run))
    (tmp_path / "file").write_text("")
    for target in ("/proc/uebench-export", str(tmp_path / "file" / "out")):
        message = one_line_error(capsys, main(["export", record, target]))
        assert "export:" in message
    message = one_line_error(capsys, main(["export", record, "/proc/u.npz", "--format", "npz"]))
    assert "/proc" in message


def test_leaderboard_and_compare_to_an_unusable_place_are_one_line(tmp_path, capsys) -> None:
    write_records(tmp_path / "run", sound_record())
    references = tmp_path / "refs.csv"
    references.write_text(
        "id,where,dataset,method,defense,arch,value,tolerance\nr1,here,digits,emin,none,a,1,1\n"
    )
    (tmp_path / "file").write_text("")
    for place in ("/proc/uebench-board", str(tmp_path / "file")):
        board = ["leaderboard", str(tmp_path / "run"), "-o", f"{place}/b.csv"]
        assert "leaderboard -o" in one_line_error(capsys, main(board))
        compare = ["compare", str(tmp_path / "run"), "-r", str(references), "-o", f"{place}/c.csv"]
        assert "compare -o" in one_line_error(capsys, main(compare))


class FullDisk:
    """``os.fdopen`` whose files take ``room`` bytes, then fail with ENOSPC (disk full)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.real = os.fdopen

    def __call__(self, *args, **kwargs):
        stream = self.real(*args, **kwargs)
        outer = self

        class Limited:
            def write(self, data):
                if len(data) > outer.room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                outer.room -= len(data)
                return stream.write(data)

            def __getattr__(self, name):
                return getattr(stream, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                stream.close()

        return Limited()


def test_a_full_disk_while_writing_a_record_or_the_table_is_one_line(tmp_path, monkeypatch) -> None:
    store = ResultStore(tmp_path / "run")
    monkeypatch.setattr(uebench.files.os, "fdopen", FullDisk(10))
    with pytest.raises(UebenchError, match=r"^disk full writing .*c0\.json$"):
        store.write(sound_record())
    with pytest.raises(UebenchError, match=r"^disk full writing .*results\.csv$"):
        store.write_csv()
    assert not list((tmp_path / "run").rglob("*.tmp")) and not list(store.cells.glob("*.json"))


def test_a_full_disk_writing_the_poison_cache_blames_the_disk(
    tmp_path, tiny_grid, monkeypatch
) -> None:
    monkeypatch.setattr(uebench.files.os, "fdopen", FullDisk(1000))  # torch.save fails inside
    grid = {**tiny_grid, "methods": ["random"], "out": str(tmp_path / "o")}
    with pytest.raises(UebenchError) as error:
        run_grid(GridConfig(**grid))
    message = str(error.value)
    assert message.startswith("disk full writing ") and "cache" in message
    assert "failed while crafting" not in message and "enforce" not in message


def test_a_file_size_limit_mid_run_is_one_line_naming_the_file(tmp_path) -> None:
    """A real EFBIG: the grid runs under ``ulimit -f`` too small for a record or a model."""
    cache = tmp_path / "cache"
    assert main(["run", *TINY, "--methods", "clean", "--out", str(tmp_path / "warm"),
                 "--cache-dir", str(cache)]) == 0  # fmt: skip
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000)); "
        "from uebench.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for extra, culprit in (([], ".json"), (["--save-models"], ".pt")):
        out = tmp_path / f"o{len(extra)}"
        args = [*TINY, "--methods", "clean", "--seeds", "1", "--out", str(out),
                "--cache-dir", str(cache), *extra]  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", script, "run", *args], capture_output=True, text=True
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("uebench: error: file too large") and culprit in lines[0]


def test_a_config_or_reference_file_that_is_not_utf8_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "grid.toml"
    config.write_bytes(b"methods = '\xff\xfe'\n")
    message = one_line_error(capsys, main(["run", "--config", str(config)]))
    assert "not UTF-8" in message and str(config) in message
    write_records(tmp_path / "run", sound_record())
    references = tmp_path / "refs.csv"
    references.write_bytes(b"id,value\n\xff,1\n")
    args = ["compare", str(tmp_path / "run"), "-r", str(references)]
    assert "not UTF-8" in one_line_error(capsys, main(args))


def test_class_names_equal_but_for_case_are_one_line_at_png_export(tmp_path) -> None:
    x = torch.zeros(2, 1, 2, 2, dtype=torch.uint8)
    data = ImageData("d", x, torch.tensor([0, 1]), x, torch.tensor([0, 1]), ("Cat", "cat"))
    with pytest.raises(UebenchError, match="'Cat' is used twice"):
        export_cli._write_png_tree(tmp_path / "out", data, x, "{}")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 7: clear lines


def test_a_zero_dim_image_array_is_named_as_such(tmp_path, data) -> None:
    np.savez(tmp_path / "p.npz", x_train=np.uint8(3))
    with pytest.raises(UebenchError, match=r"x_train must be N×H×W×C or N×C×H×W .*0-dim array"):
        craft_file(f"file:{tmp_path / 'p.npz'}", data)
    np.savez(tmp_path / "d.npz", x_train=np.uint8(3), y_train=np.zeros(2, np.int64),
             x_test=np.zeros((2, 4, 4, 3), np.uint8), y_test=np.zeros(2, np.int64))  # fmt: skip
    with pytest.raises(UebenchError, match=r"x_train must be N×H×W×C .*got a 0-dim array"):
        load_cell_data(f"npz:{tmp_path / 'd.npz'}", None, None, None)


def forged_npy(path: Path, shape: tuple[int, ...]) -> None:
    """A tiny ``.npy`` file whose header claims an array of ``shape``."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        handle.write(bytes(1700))


def test_a_header_claiming_a_billion_images_is_refused_before_allocating(
    tmp_path, monkeypatch
) -> None:
    def no_allocation(*args, **kwargs):
        raise AssertionError("numpy was asked to read the array")

    forged_npy(tmp_path / "p.npy", (10**9, 3, 32, 32))
    monkeypatch.setattr(np, "load", no_allocation)
    with pytest.raises(UebenchError, match=r"claims an array of shape \(1000000000, 3, 32, 32\)"):
        read_poison_file(tmp_path / "p.npy")
    monkeypatch.undo()
    import zipfile

    forged_npy(tmp_path / "x.npy", (10**9, 32, 32, 3))
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        archive.write(tmp_path / "x.npy", "x_train.npy")
    monkeypatch.setattr(np, "load", no_allocation)
    with pytest.raises(UebenchError, match=r"claims an array .*truncated or forged"):
        load_cell_data(f"npz:{tmp_path / 'd.npz'}", None, None, None)


def test_a_read_only_poison_cache_at_export_blames_the_cache(
    tiny_run, tmp_path, monkeypatch, capsys
) -> None:
    cache = tmp_path / "ro-cache"
    real = pathlib.Path.mkdir

    def read_only(self, *args, **kwargs):
        if self == cache or cache in self.parents:
            raise OSError(errno.EROFS, "Read-only file system")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    args = ["export", str(record_path(tiny_run)), str(tmp_path / "o"), "--cache-dir", str(cache)]
    message = one_line_error(capsys, main(args))
    assert "read-only file system writing the poison cache in" in message
    assert "failed while crafting" not in message


def test_sigterm_is_handled_like_ctrl_c(tmp_path) -> None:
    out = tmp_path / "o"
    args = [*TINY, "--methods", "clean", "--epochs", "100000", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from uebench.cli import main; "
         "sys.exit(main(sys.argv[1:]))", "run", *args],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("cells/*.claim")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(out.glob("cells/*.claim")), "the cell never started"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143
    assert err.strip().splitlines()[-1].startswith("uebench: terminated; finished cells are saved")
    assert not list(out.glob("cells/*.claim"))


def identified_record(sha256: str, final_acc: float) -> dict:
    """A ``file:p.npz`` record whose identity names the file's content."""
    identity = {
        "dataset": {"name": "digits", "options": {}},
        "method": {"name": "file", "options": {"sha256": sha256}},
        "defense": [{"name": "none", "options": {}}],
        "arch": {"name": "smallcnn", "options": {}},
        "seed": 0,
        "train": {},
        "train_size": None,
        "test_size": None,
    }
    cell_id = cache_key(identity)[:16]
    return sound_record(cell_id, method="file:p.npz", final_acc=final_acc,
                        config={"identity": identity})  # fmt: skip


def test_two_poisons_of_one_file_path_are_two_rows(tmp_path) -> None:
    write_records(
        tmp_path / "run", identified_record("a" * 64, 20.0), identified_record("b" * 64, 30.0)
    )
    board, _ = leaderboard([tmp_path / "run"])
    assert sorted(board["method"]) == [
        "file:p.npz [sha256 aaaaaaaa]",
        "file:p.npz [sha256 bbbbbbbb]",
    ]
    assert sorted(board["mean"]) == [20.0, 30.0]
    assert len(cells_frame(read_records([tmp_path / "run"]))["method"].unique()) == 2


# --------------------------------------------------------------------------- 8: leftovers


def test_a_killed_exports_staging_folder_is_removed_by_the_next(tiny_run, tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{STAGING_PREFIX}{dead.pid}@{this_host()}-abcd1234"
    (stale / "train" / "0").mkdir(parents=True)
    (stale / "train" / "0" / "0.png").write_bytes(b"half")
    live = tmp_path / f"{STAGING_PREFIX}{os.getpid()}@{this_host()}-live0000"
    live.mkdir()  # a running export's: kept
    user = tmp_path / ".my-own.tmp"
    user.mkdir()  # not uebench's: kept
    assert main(["export", str(record_path(tiny_run)), str(tmp_path / "out")]) == 0
    assert not stale.exists() and live.exists() and user.exists()


def test_png_and_npz_exports_get_the_permissions_of_the_umask(tiny_run, tmp_path) -> None:
    record = str(record_path(tiny_run))
    previous = os.umask(0o022)
    try:
        assert main(["export", record, str(tmp_path / "png")]) == 0
        assert main(["export", record, str(tmp_path / "p.npz"), "--format", "npz"]) == 0
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    folders = [tmp_path / "png", *(p for p in (tmp_path / "png").rglob("*") if p.is_dir())]
    files = [p for p in (tmp_path / "png").rglob("*") if p.is_file()]
    assert {mode(p) for p in folders} == {0o755}
    assert {mode(p) for p in files} == {0o644}
    assert mode(tmp_path / "p.npz") == 0o644
