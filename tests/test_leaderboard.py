"""Leaderboard aggregation on hand-made records: mean/std/count, sorting, pivot, files, errors."""

import json
import math

import pandas as pd
import pytest

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.results.leaderboard import (
    aggregate,
    board_markdown,
    cells_frame,
    leaderboard,
    pivot,
    read_records,
    write_board,
)


def write_cell(run_dir, method, defense, seed, final_acc, **extra):
    """A minimal record as ``uebench run`` writes it (no config.identity: keys come from specs)."""
    record = {
        "cell_id": f"{method}-{defense}-{seed}-{extra.get('epochs', 10)}".replace(":", "_"),
        "dataset": extra.pop("dataset", "cluttered-digits"),
        "method": method,
        "defense": defense,
        "arch": extra.pop("arch", "smallcnn"),
        "seed": seed,
        "epochs": extra.pop("epochs", 10),
        "train_size": 100,
        "test_size": 50,
        "final_acc": final_acc,
        "selected_acc": extra.pop("selected_acc", final_acc),
        "best_acc": final_acc,
        "history": [],
        "countermeasure_notes": extra.pop("notes", {}),
        **extra,
    }
    path = run_dir / "cells" / f"{record['cell_id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run"
    for seed, acc in enumerate([10.0, 20.0, 30.0]):
        write_cell(run_dir, "emin", "none", seed, acc)
    for seed, acc in enumerate([90.0, 92.0]):
        write_cell(run_dir, "clean", "none", seed, acc)
    for seed, acc in enumerate([40.0, 44.0]):
        write_cell(run_dir, "random", "none", seed, acc)
    write_cell(run_dir, "emin", "cutout", 0, 50.0)
    write_cell(run_dir, "clean", "cutout", 0, 88.0)
    return run_dir


def row(board, method, defense):
    found = board[(board["method"] == method) & (board["defense"] == defense)]
    assert len(found) == 1
    return found.iloc[0]


def test_mean_std_and_count_over_seeds(run):
    board, records = leaderboard([run])
    assert len(records) == 9
    emin = row(board, "emin", "none")
    assert emin["mean"] == pytest.approx(20.0)
    assert emin["std"] == pytest.approx(10.0)  # sample std of 10, 20, 30
    assert emin["n"] == 3 and emin["seeds"] == "0,1,2"
    clean = row(board, "clean", "none")
    assert clean["mean"] == pytest.approx(91.0)
    assert clean["std"] == pytest.approx(math.sqrt(2.0))
    single = row(board, "emin", "cutout")
    assert single["n"] == 1 and math.isnan(single["std"])


def test_one_row_per_setting_sorted_most_effective_first(run):
    board, _ = leaderboard([run])
    assert len(board) == 5
    # 'none' first, then within each countermeasure the lowest accuracy first
    assert list(zip(board["defense"], board["method"], strict=True)) == [
        ("none", "emin"),
        ("none", "random"),
        ("none", "clean"),
        ("cutout", "emin"),
        ("cutout", "clean"),
    ]
    assert list(board["rank"]) == [1, 2, 3, 1, 2]


def test_pivot_is_method_by_countermeasure_ranked_by_score(run):
    board, _ = leaderboard([run])
    wide = pivot(board)
    assert list(wide["method"]) == ["emin", "random", "clean"]
    assert list(wide.columns) == ["dataset", "arch", "method", "none", "cutout", "score"]
    emin = wide.set_index("method").loc["emin"]
    assert emin["none"] == pytest.approx(20.0) and emin["cutout"] == pytest.approx(50.0)
    assert emin["score"] == pytest.approx(35.0)
    assert math.isnan(wide.set_index("method").loc["random", "cutout"])
    worst = pivot(board, rank_by="worst").set_index("method")
    assert worst.loc["emin", "score"] == pytest.approx(50.0)
    assert worst.loc["clean", "score"] == pytest.approx(91.0)


def test_rank_by_mean_or_worst_case(tmp_path):
    run_dir = tmp_path / "r"
    write_cell(run_dir, "a", "none", 0, 10.0)
    write_cell(run_dir, "a", "cutout", 0, 70.0)  # mean 40, worst 70
    write_cell(run_dir, "b", "none", 0, 42.0)
    write_cell(run_dir, "b", "cutout", 0, 44.0)  # mean 43, worst 44
    board = aggregate(cells_frame(read_records([run_dir])))
    assert list(pivot(board, rank_by="mean")["method"]) == ["a", "b"]
    assert list(pivot(board, rank_by="worst")["method"]) == ["b", "a"]
    with pytest.raises(UebenchError, match="rank_by must be one of"):
        pivot(board, rank_by="median")


def test_metric_column_is_an_option(tmp_path):
    run_dir = tmp_path / "r"
    write_cell(run_dir, "emin", "earlystop", 0, 30.0, selected_acc=55.0)
    board, _ = leaderboard([run_dir], metric="selected_acc")
    assert board["mean"].iloc[0] == pytest.approx(55.0)
    assert board["metric"].iloc[0] == "selected_acc"
    with pytest.raises(UebenchError, match="no cell has a number for 'nope'"):
        leaderboard([run_dir], metric="nope")


def test_countermeasure_notes_are_metrics(tmp_path):
    run_dir = tmp_path / "r"
    write_cell(
        run_dir, "emin", "partial:rate=0.5", 0, 80.0, notes={"rate": 0.5, "clean_part_acc": 70}
    )
    board, _ = leaderboard([run_dir], metric="clean_part_acc")
    assert board["mean"].iloc[0] == pytest.approx(70.0)


def test_spellings_of_one_config_group_together(tmp_path):
    run_dir = tmp_path / "r"
    write_cell(run_dir, "emin", "none", 0, 10.0)
    write_cell(run_dir, "emin:form=sample", "none", 1, 30.0)
    board, _ = leaderboard([run_dir])
    assert len(board) == 1 and board["n"].iloc[0] == 2 and board["mean"].iloc[0] == 20.0


def test_different_epochs_are_different_rows_and_same_cell_counts_once(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_cell(first, "emin", "none", 0, 10.0, epochs=10)
    write_cell(second, "emin", "none", 0, 99.0, epochs=10)  # same cell id: counted once
    write_cell(second, "emin", "none", 0, 50.0, epochs=20)
    board, records = leaderboard([first, second])
    assert len(records) == 2
    assert sorted(board["mean"]) == [10.0, 50.0]
    assert "epochs" in pivot(board).columns


def test_write_board_files(run, tmp_path):
    board, _ = leaderboard([run])
    paths = write_board(board, tmp_path / "out" / "mini.csv")
    assert [p.name for p in paths] == ["mini.csv", "mini.pivot.csv", "mini.md"]
    long = pd.read_csv(paths[0])
    assert "_key_method" not in long.columns
    assert long.loc[0, "method"] == "emin" and long.loc[0, "mean"] == 20
    wide = pd.read_csv(paths[1])
    assert list(wide["method"]) == ["emin", "random", "clean"]
    markdown = paths[2].read_text()
    assert "| cluttered-digits | smallcnn | emin | 20.00 ± 10.00 (n=3) | 50.00 (n=1) | 35.00 |" in (
        markdown
    )
    assert board_markdown(board).startswith("## Clean test accuracy")
    with pytest.raises(UebenchError, match=r"must end in \.csv"):
        write_board(board, tmp_path / "x.md")


def test_cli_leaderboard(run, tmp_path, capsys):
    assert main(["leaderboard", str(run), "-o", str(tmp_path / "lb.csv")]) == 0
    assert (tmp_path / "lb.pivot.csv").exists()
    assert main(["leaderboard", str(run), "--rank-by", "worst"]) == 0
    assert "| emin |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (json.dumps({"dataset": "d", "method": "m", "defense": "none", "arch": "a"}), "'seed'"),
        (
            json.dumps({"dataset": "d", "method": "m", "defense": "none", "arch": "a", "seed": 0}),
            "no numeric 'final_acc'",
        ),
        (
            json.dumps(
                {
                    "dataset": "d",
                    "method": "m",
                    "defense": "none",
                    "arch": "a",
                    "seed": 0,
                    "final_acc": "high",
                }
            ),
            "'final_acc' must be a number",
        ),
    ],
)
def test_malformed_record_is_one_line_naming_the_file(tmp_path, capsys, content, problem):
    bad = tmp_path / "r" / "cells" / "bad.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    with pytest.raises(UebenchError, match=problem) as error:
        read_records([tmp_path / "r"])
    assert str(bad) in str(error.value) and "\n" not in str(error.value)
    assert main(["leaderboard", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err


def test_not_a_results_folder(tmp_path):
    with pytest.raises(UebenchError, match="does not exist"):
        read_records([tmp_path / "missing"])
    with pytest.raises(UebenchError, match="no cells/ folder"):
        read_records([tmp_path])
    (tmp_path / "cells").mkdir()
    with pytest.raises(UebenchError, match="no finished cells"):
        read_records([tmp_path])
