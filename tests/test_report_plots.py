"""Plots are written as valid PNGs; the report embeds (HTML) or links (Markdown) them."""

import base64
import re
import struct
import sys

import pytest
from test_leaderboard import write_cell
from tiny_cli import one_line_error

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.results import plots
from uebench.results.leaderboard import leaderboard
from uebench.results.report import write_report

pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

PNG = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and header chunk."""
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_valid_png(path):
    width, height = png_size(path.read_bytes())
    assert width > 200 and height > 150
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[:2] == (height, width)  # decodes fully


def history(final, epochs=4):
    return [
        {"epoch": e, "test_acc": final * e / epochs, "train_acc": 50.0, "train_loss": 1.0}
        for e in range(1, epochs + 1)
    ]


def confusion(accuracy):
    diagonal = round(accuracy / 10)
    return [
        [diagonal if i == j else (10 - diagonal) * (j == (i + 1) % 3) for j in range(3)]
        for i in range(3)
    ]


@pytest.fixture
def run(tmp_path):
    run_dir = tmp_path / "run"
    cells = {("clean", "none"): [90, 88], ("emin", "none"): [15, 25], ("emin", "cutout"): [40, 50]}
    for rate, accs in {0.2: [80, 84], 0.6: [60, 66]}.items():
        cells[("emin", f"partial:rate={rate}")] = accs
    for (method, defense), accs in cells.items():
        for seed, acc in enumerate(accs):
            notes = {}
            if defense.startswith("partial"):
                rate = float(defense.split("=")[1])
                notes = {"rate": rate, "clean_part_acc": acc - 5.0, "poisoned_indices": [1, 2]}
            write_cell(
                run_dir,
                method,
                defense,
                seed,
                float(acc),
                history=history(acc),
                confusion_matrix=confusion(acc),
                classes=["zero", "one", "two"],
                notes=notes,
            )
    return run_dir


def test_each_plot_is_a_valid_png(run, tmp_path):
    board, records = leaderboard([run])
    out = tmp_path / "plots"
    heat = plots.heatmaps(board, out)
    curves = plots.learning_curves(records, out)
    partial = plots.partial_curves(records, out)
    matrices = plots.confusion_matrices(records, out)
    assert [p.name for p in heat] == ["heatmap_cluttered-digits_smallcnn.png"]
    assert [p.name for p in curves] == ["curves_cluttered-digits_smallcnn.png"]
    assert [p.name for p in partial] == ["partial_cluttered-digits_smallcnn.png"]
    assert len(matrices) == 4  # one per countermeasure: none, cutout, two partial rates
    for path in heat + curves + partial + matrices:
        assert_valid_png(path)
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_no_partial_cells_no_partial_plot(tmp_path):
    write_cell(tmp_path / "r", "emin", "none", 0, 20.0, history=history(20))
    _, records = leaderboard([tmp_path / "r"])
    assert plots.partial_curves(records, tmp_path / "p") == []


def test_missing_plotting_library_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "seaborn", None)  # makes `import seaborn` fail
    with pytest.raises(UebenchError, match=r"plots need matplotlib and seaborn.*uebench\[plots\]"):
        plots.plotting()


def test_html_report_is_self_contained(run, tmp_path):
    page = write_report([run], tmp_path / "report", references=[])
    text = page.read_text()
    assert page.name == "report.html" and text.startswith("<!DOCTYPE html>")
    images = re.findall(r'src="([^"]+)"', text)
    assert len(images) == 7 and all(src.startswith("data:image/png;base64,") for src in images)
    for src in images:
        png_size(base64.b64decode(src.split(",", 1)[1]))
    assert "Leaderboard" in text and "20.00 ± 7.07" in text  # emin/none over two seeds


def test_cli_markdown_report_links_pngs_and_compares(run, tmp_path, capsys):
    references = tmp_path / "mine.csv"
    references.write_text(
        "id,dataset,method,defense,arch,value,tolerance\n"
        "a,cluttered-digits,emin,none,smallcnn,20,2\nb,cluttered-digits,emin,cutout,smallcnn,10,2\n"
    )
    assert main(["report", str(run), "--format", "md", "-r", str(references)]) == 0
    page = run / "report" / "report.md"  # the default output folder
    assert f"wrote {page}" in capsys.readouterr().out
    text = page.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 7
    for link in links:
        assert_valid_png(page.parent / link)
    assert "## Against reported numbers" in text
    assert "2 of 2 references measured in this run; 1 outside their tolerance." in text


@pytest.mark.parametrize("fmt", ["html", "md"])
def test_the_page_shows_no_raw_missing_values_or_markup(tmp_path, fmt):
    # One seed; a method the suite cannot score (so rank columns are missing); a countermeasure
    # with no clean row (diagnostics say so); training accuracy that never passes 90%.
    run_dir = tmp_path / "run"
    for method, defense, acc in [
        ("clean", "none", 90.0),
        ("emin", "none", 12.0),
        ("emin", "cutout", 40.0),
    ]:
        write_cell(run_dir, method, defense, 0, acc, history=history(acc))
    page = write_report([run_dir], tmp_path / "report", references=[], fmt=fmt, suite="v1")
    text = page.read_text()
    text = re.sub(r'src="data:[^"]*"', "", text)
    for raw in ("None", "<NA>", "&lt;NA&gt;", "nan", "`", "seed(s)", "over seeds", "at never"):
        assert raw not in text, raw
    assert "mean ± std over 1 seed;" in text
    assert "never reached" in text and "no clean row" in text


def _tree(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


@pytest.mark.parametrize(
    "given, message",
    [
        ("missing", "results folder {} does not exist"),
        ("afile", "{} is a file, not a uebench results folder"),
        ("bare", "{} is not a uebench results folder (it has no cells/ folder)"),
    ],
)
@pytest.mark.parametrize("out", [None, "new/page"])
def test_a_bad_results_folder_is_one_line_and_creates_nothing(
    tmp_path, capsys, given, message, out
):
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "bare").mkdir()
    before = _tree(tmp_path)
    folder = tmp_path / given
    args = ["report", str(folder), *(["-o", str(tmp_path / out)] if out else [])]
    assert one_line_error(capsys, main(args)) == "uebench: error: " + message.format(folder)
    assert _tree(tmp_path) == before and (tmp_path / "afile").read_text() == "mine"


def test_a_bad_second_results_folder_leaves_the_first_untouched(run, tmp_path, capsys):
    before = _tree(tmp_path)
    message = one_line_error(capsys, main(["report", str(run), str(tmp_path / "typo")]))
    assert "typo does not exist" in message
    assert _tree(tmp_path) == before  # no run/report/


def test_an_error_found_while_reading_removes_the_output_folders_it_made(tmp_path, capsys):
    (tmp_path / "run" / "cells").mkdir(parents=True)  # a results folder with no finished cell
    before = _tree(tmp_path)
    args = ["report", str(tmp_path / "run"), "-o", str(tmp_path / "a" / "b")]
    assert "no finished cells" in one_line_error(capsys, main(args))
    assert _tree(tmp_path) == before


def test_write_report_refuses_a_file_for_a_results_folder(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(UebenchError, match="afile is a file, not a uebench results folder"):
        write_report([tmp_path / "afile"], tmp_path / "report")
    assert not (tmp_path / "report").exists()
