"""The grid runner and CLI: records, results.csv, resume after a kill, config files, errors."""

import json

import pandas as pd
import pytest

import uebench.grid.runner as runner
from uebench.cli import main
from uebench.errors import UebenchError
from uebench.files import append_csv
from uebench.grid import GridConfig, run_grid
from uebench.grid.store import ResultStore


def test_grid_writes_records_and_csv(tmp_path, tiny_grid):
    table = run_grid(
        GridConfig(
            methods=["clean", "random:form=class"],
            seeds=[0, 1],
            out=str(tmp_path / "g"),
            **tiny_grid,
        )
    )
    assert len(table) == 4
    csv = pd.read_csv(tmp_path / "g" / "results.csv")
    for column in (
        "dataset",
        "method",
        "defense",
        "arch",
        "seed",
        "epochs",
        "final_acc",
        "best_acc",
    ):
        assert column in csv.columns
    assert set(csv["method"]) == {"clean", "random:form=class"}  # the spec as written
    record = json.loads(next((tmp_path / "g" / "cells").glob("*.json")).read_text())
    for key in (
        "config",
        "seed",
        "code_version",
        "poison_hash",
        "history",
        "confusion_matrix",
        "per_class_acc",
        "wall_time_s",
    ):
        assert key in record
    assert len(record["history"]) == 1
    assert sum(map(sum, record["confusion_matrix"])) == 100


def test_a_cell_scores_its_victim_on_its_last_epochs_predictions(tmp_path, monkeypatch, tiny_grid):
    """The final evaluation runs once: the record's confusion matrix comes from the last
    epoch's predictions; after a countermeasure's ``after_training`` the model is predicted
    afresh."""
    import uebench.grid.cell as cell_module

    calls = []
    real_predict = cell_module.predict

    def counted(*args, **kwargs):
        calls.append(args[0])
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(cell_module, "predict", counted)
    for defense, predicted_again in (("none", 0), ("partial:rate=0.5", 1)):
        calls.clear()
        out = tmp_path / defense.split(":")[0]
        run_grid(GridConfig(methods=["random"], defenses=[defense], out=str(out), **tiny_grid))
        record = json.loads(next((out / "cells").glob("*.json")).read_text())
        confusion = record["confusion_matrix"]
        correct = sum(row[i] for i, row in enumerate(confusion))
        assert 100 * correct / sum(map(sum, confusion)) == pytest.approx(record["final_acc"])
        assert len(calls) == predicted_again


def test_killed_grid_resumes_without_recomputing(tmp_path, monkeypatch, tiny_grid):
    config = GridConfig(methods=["clean", "random"], out=str(tmp_path / "g"), **tiny_grid)
    real_run_cell = runner.run_cell
    calls = []

    def dies_on_second(cell, progress=True, model_path=None):
        calls.append(cell.method)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_cell(cell, progress, model_path)

    monkeypatch.setattr(runner, "run_cell", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_grid(config)
    assert len(list((tmp_path / "g" / "cells").glob("*.json"))) == 1
    # The table a killed run leaves holds the rows of the cells finished so far.
    assert pd.read_csv(tmp_path / "g" / "results.csv")["method"].tolist() == ["clean"]

    calls.clear()
    monkeypatch.setattr(
        runner,
        "run_cell",
        lambda cell, progress=True, path=None: (
            calls.append(cell.method),
            real_run_cell(cell, progress, path),
        )[1],
    )
    table = run_grid(config)
    assert calls == ["random"] and len(table) == 2
    calls.clear()
    run_grid(config)
    assert calls == []  # nothing left to do
    assert len(list((tmp_path / "g" / "cells").glob("*.json"))) == 2


def test_results_csv_is_rebuilt_at_start_and_end_and_grows_a_row_per_cell(
    tmp_path, monkeypatch, tiny_grid
):
    out = tmp_path / "g"
    run_grid(GridConfig(methods=["clean"], out=str(out), **tiny_grid))
    (stale,) = (out / "cells").glob("*.json")
    stale.unlink()  # a record removed by hand: its row must not survive the next run
    rewrites, appended = [], []
    real_write_csv, real_add = ResultStore.write_csv, ResultStore.add

    def write_csv(store):
        rewrites.append(store.root)
        return real_write_csv(store)

    def add(store, record):
        path = real_add(store, record)
        appended.append(pd.read_csv(out / "results.csv")["method"].tolist())
        return path

    monkeypatch.setattr(ResultStore, "write_csv", write_csv)
    monkeypatch.setattr(ResultStore, "add", add)
    table = run_grid(GridConfig(methods=["random", "clean"], out=str(out), **tiny_grid))
    assert len(rewrites) == 2, "rewritten once as the run starts and once as it ends"
    # The first rewrite drops the stale row, each finished cell then appends its own.
    assert appended == [["random"], ["random", "clean"]]
    assert sorted(pd.read_csv(out / "results.csv")["method"]) == sorted(table["method"])


def test_appended_rows_are_escaped_and_whole(tmp_path):
    path = tmp_path / "t.csv"
    append_csv(path, pd.DataFrame([{"method": "=HYPERLINK(1)", "acc": 1.234}]), "%.2f")
    append_csv(path, pd.DataFrame([{"method": "clean", "acc": 50.0}]), "%.2f")
    assert path.read_text().splitlines() == ["method,acc", "'=HYPERLINK(1),1.23", "clean,50.00"]


def test_same_config_same_cell_and_same_poison(tmp_path, tiny_grid):
    a = GridConfig(methods=["random"], out=str(tmp_path / "a"), **tiny_grid)
    b = GridConfig(methods=["random:form=sample:seed=0"], out=str(tmp_path / "b"), **tiny_grid)
    assert a.cells()[0].cell_id == b.cells()[0].cell_id
    ta, tb = run_grid(a), run_grid(b)
    assert ta["poison_hash"][0] == tb["poison_hash"][0]


def test_config_file_and_flags_override(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text(
        'dataset = "digits:size=8"\nmethods = ["clean", "random"]\narchs = "smallcnn:width=4"\n'
        "epochs = 1\ntrain_size = 200\ntest_size = 100\n"
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--config",
                str(config),
                "--methods",
                "clean",
                "--out",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert list(pd.read_csv(out / "results.csv")["method"]) == ["clean"]
    assert "clean" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["run", "--methods", "emni"], "unknown method 'emni'; valid: ar, clean"),
        (["run", "--defenses", "cutmixx"], "'cutmixx'; valid: advtrain, autoaugment"),
        (["run", "--archs", "resnet18:depth=3"], "has no option 'depth'; valid: width, stem"),
        (["run", "--dataset", "cifar10", "--data-root", "/nonexistent"], "--data-root"),
        (["run", "--methods", "random:eps=8"], "did you mean 8/255"),
        (["run", "--seeds", "a,b"], "bad seeds"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, argv, fragment):
    assert main([*argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and "Traceback" not in err


def test_bad_config_key_is_rejected(tmp_path):
    with pytest.raises(UebenchError, match="unknown config key 'method'"):
        GridConfig.from_dict({"method": "emin"})
    bad = tmp_path / "bad.toml"
    bad.write_text("methods = [")
    assert main(["run", "--config", str(bad)]) == 2


def test_list_shows_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("methods:", "emin", "defenses:", "archs:", "resnet18", "datasets:", "cifar10"):
        assert word in out
