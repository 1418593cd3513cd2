"""Results that look valid and are not, and poisons served stale (issue 14):

* two spellings of one cell run once, under the first (through the CLI);
* a setting whose clean row stayed near chance is flagged by the summary, the leaderboard, the
  report and ``uebench compare``, and never ranked nor judged;
* two ``uebench run`` processes on one ``--out`` train each cell once (claims), and a dead
  claimant's claim is taken over;
* an outside plugin's code is part of its poison key and cell id; uebench's own are not;
* temporary files of writers killed mid-write are removed;
* ``uebench.craft`` and ``uebench.load`` read a spec as the runner does.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from test_leaderboard import write_cell
from tiny_cli import TINY_CLI

import uebench
from uebench.cli import main
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.files import atomic_write, remove_stale_temporaries, this_host
from uebench.grid import GridConfig, ResultStore, run_grid, summary
from uebench.grid import runner as runner_module
from uebench.grid import store as store_module
from uebench.grid.cell import Cell
from uebench.identity import method_identity, poison_key, spec_plugins
from uebench.registry import METHODS
from uebench.results.leaderboard import (
    NEAR_CHANCE_STATUS,
    board_markdown,
    leaderboard,
    near_chance,
    pivot,
)
from uebench.results.references import Reference, compare
from uebench.scenarios import spec_poison
from uebench.scoring.suites import Suite
from uebench.storage.cache import PoisonCache
from uebench.training import TrainConfig

#: The conftest ``tiny_grid`` settings as ``uebench run`` flags.
TINY = [*TINY_CLI, "--threads", "1"]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


# --- two spellings of one cell ------------------------------------------------------------------


def test_cli_runs_two_spellings_once_under_the_first_and_warns_near_chance(tmp_path, capsys):
    out = tmp_path / "g"
    methods = "clean,clean,random,random:form=sample,random:eps=8/255"
    assert main(["run", *TINY, "--methods", methods, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "random:form=sample/none/smallcnn:width=4/seed 0 is the same cell as random/" in printed
    assert printed.count("is the same cell as") == 3
    assert sorted(pd.read_csv(out / "results.csv")["method"]) == ["clean", "random"]
    # One epoch on 8-pixel digits learns nothing: the summary says the column means nothing.
    clean = pd.read_csv(out / "results.csv").set_index("method").loc["clean", "final_acc"]
    assert ("warning: clean training reached only" in printed) == near_chance(clean, 10)


# --- clean baselines near chance ----------------------------------------------------------------


@pytest.fixture
def blurred(tmp_path):
    """A run where clean training learned under ``none`` (90%) but not under ``blur`` (11%)."""
    run = tmp_path / "run"
    for seed in (0, 1):
        write_cell(run, "clean", "none", seed, 90.0, num_classes=10)
        write_cell(run, "emin", "none", seed, 20.0, num_classes=10)
        write_cell(run, "random", "none", seed, 85.0, num_classes=10)
        write_cell(run, "clean", "blur", seed, 11.0, num_classes=10)
        write_cell(run, "emin", "blur", seed, 10.0, num_classes=10)
        write_cell(run, "random", "blur", seed, 12.0, num_classes=10)
    return run


def test_near_chance_is_relative_to_the_headroom():
    assert near_chance(23.0, 10) and near_chance(10.0, 10)  # the 23% after 3 epochs
    assert not near_chance(40.0, 10) and not near_chance(90.0, 10)
    assert near_chance(55.0, 2) and not near_chance(75.0, 2)
    assert near_chance(50.0, None) is None and near_chance(None, 10) is None


def test_leaderboard_does_not_rank_a_setting_whose_clean_row_is_near_chance(blurred):
    board, _ = leaderboard([blurred])
    by = board.set_index(["defense", "method"])
    assert list(by.loc["none"].sort_values("mean")["rank"]) == [1, 2, 3]
    assert by.loc["none", "baseline_ok"].all()
    assert by.loc["blur", "rank"].isna().all()  # clean would be "rank 1" under blur otherwise
    assert not by.loc["blur", "baseline_ok"].any()
    wide = pivot(board).set_index("method")
    assert wide.loc["emin", "score"] == pytest.approx(20.0)  # blur left out of the score
    assert set(wide["baseline_near_chance"]) == {"blur"}
    markdown = board_markdown(board)
    assert "10.00 ± 0.00 †" in markdown
    assert "† clean training reached only 11.0% under blur on cluttered-digits" in markdown


def test_a_suite_gives_no_worst_case_nor_rank_from_near_chance_cells(blurred):
    board, _ = leaderboard([blurred])
    suite = Suite("blur-v1", 1, "for tests", ("none", "blur"))
    wide = pivot(board, suite=suite).set_index("method")
    for method in ("emin", "random"):  # each has a † number under blur
        row = wide.loc[method]
        assert pd.isna(row["worst_case"]) and pd.isna(row["reached_by"]), row
        assert pd.isna(row["rank_in_budget"]) and pd.isna(row["rank_overall"]), row
        assert row["missing"] == "blur"
    only_none = pivot(board, suite=Suite("none-v1", 1, "x", ("none",))).set_index("method")
    assert only_none.loc["emin", "worst_case"] == pytest.approx(20.0)
    assert only_none.loc["emin", "rank_overall"] == 1  # unflagged cells still rank
    markdown = board_markdown(board, suite=suite)
    assert markdown.count("Sorted by") == 1 and "Most effective method first" not in markdown
    assert "Sorted by worst case" in markdown and "Sorted by score" in board_markdown(board)


def test_records_without_a_class_count_are_ranked_as_before(tmp_path):
    run = tmp_path / "r"
    write_cell(run, "clean", "blur", 0, 11.0)
    write_cell(run, "emin", "blur", 0, 10.0)
    board, _ = leaderboard([run])
    assert list(board["rank"]) == [1, 2] and board["baseline_ok"].isna().all()


def test_compare_neither_fails_nor_passes_noise_over_a_near_chance_baseline(blurred, capsys):
    common = dict(source="s", dataset="cluttered-digits", arch="smallcnn", tolerance=5.0)
    references = [
        Reference(id="blur", method="emin", defense="blur", value=10.0, **common),
        Reference(id="blur-far", method="emin", defense="blur", value=60.0, **common),
        Reference(id="clean-blur", method="clean", defense="blur", value=80.0, **common),
        Reference(id="none", method="emin", defense="none", value=20.0, **common),
    ]
    from uebench.results.leaderboard import cells_frame, read_records

    table = compare(references, cells_frame(read_records([blurred]))).set_index("reference")
    assert table.loc["s/blur", "status"] == NEAR_CHANCE_STATUS  # not a win...
    assert table.loc["s/blur-far", "status"] == NEAR_CHANCE_STATUS  # ...nor a regression
    assert table.loc["s/clean-blur", "status"] == "MISMATCH"  # the baseline itself is judged
    assert table.loc["s/none", "status"] == "ok"
    assert table.loc["s/blur", "clean"] == pytest.approx(11.0)


def test_cli_compare_check_ignores_near_chance_cells(blurred, tmp_path, capsys):
    refs = tmp_path / "refs.csv"
    refs.write_text(
        "id,dataset,method,defense,arch,value,tolerance\n"
        "far,cluttered-digits,emin,blur,smallcnn,60,5\n"
        "ok,cluttered-digits,emin,none,smallcnn,20,5\n"
    )
    assert main(["compare", str(blurred), "-r", str(refs), "--check"]) == 0
    out = capsys.readouterr().out
    assert "1 not judged: clean training stayed near chance" in out


def test_report_flags_near_chance_settings(blurred, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("seaborn")
    page = uebench.write_report([blurred], tmp_path / "report", fmt="md")
    text = page.read_text()
    assert "† clean training reached only 11.0% under blur" in text
    assert "baseline_ok" in text


def test_summary_uses_the_shared_test():
    table = pd.DataFrame(
        {
            "method": ["clean", "emin"],
            "defense": ["none", "none"],
            "arch": ["a", "a"],
            "seed": [0, 0],
            "final_acc": [23.0, 19.0],
            "num_classes": [10, 10],
        }
    )
    assert "warning: clean training reached only 23.0% under none" in summary(table)
    assert "warning" not in summary(table.assign(final_acc=[60.0, 19.0]))


# --- claims: two processes, one folder ------------------------------------------------------------

#: Waits for a go file, so that both processes start their grids at the same moment (imports
#: take seconds and would otherwise let one finish before the other begins).
WORKER = """
import pathlib, sys, time
from uebench.cli import main
pathlib.Path(sys.argv[1]).touch()
go, deadline = pathlib.Path(sys.argv[2]), time.time() + 300
while not go.exists() and time.time() < deadline:
    time.sleep(0.05)
sys.exit(main(sys.argv[3:]))
"""


def test_two_processes_on_one_out_train_each_cell_once(tmp_path):
    out, go = tmp_path / "g", tmp_path / "go"
    args = ["run", *TINY, "--methods", "clean,random", "--seeds", "0-1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(flag), str(go), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for flag in ready
    ]
    deadline = time.time() + 300
    while not all(flag.exists() for flag in ready) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:]
    # The runner prints one "uebench: NAME: ACC% (S s)" line per cell it trained.
    trained = Counter(
        match[1]
        for stdout, _ in outputs
        for match in re.finditer(r"^uebench: (\S+/seed \d+): [\d.]+% \(", stdout, re.M)
    )
    assert len(trained) == 4 and set(trained.values()) == {1}, trained
    assert len(list((out / "cells").glob("*.json"))) == 4
    assert not list((out / "cells").glob("*.claim"))  # every claim released


def write_claim(store: ResultStore, cell_id: str, pid: int, host: str, age_s: float = 0.0):
    path = store.claim_path(cell_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "host": host, "started": time.time(), "token": "x"}))
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_claims_of_live_processes_hold_and_stale_ones_are_taken_over(tmp_path):
    store = ResultStore(tmp_path)
    live = os.getppid()  # the process that started this test: alive
    write_claim(store, "a", live, this_host())
    assert not store.claim("a") and store.claimant("a")["pid"] == live
    write_claim(store, "b", dead_pid(), this_host())
    assert store.claim("b") and store.claimant("b")["pid"] == os.getpid()
    write_claim(store, "c", 1, "another-host")
    assert not store.claim("c")  # another host cannot be asked: fresh means alive
    write_claim(store, "c", 1, "another-host", age_s=store_module.CLAIM_STALE_S + 60)
    assert store.claim("c")  # no heartbeat for longer than CLAIM_STALE_S: taken over
    write_claim(store, "d", live, this_host(), age_s=store_module.CLAIM_STALE_S + 60)
    assert store.claim("d")  # a live pid without heartbeats is a reused pid or a hung run
    assert store.claim("b")  # ours already
    store.claim_path("b").write_text(json.dumps({"pid": live, "host": this_host(), "token": "y"}))
    store.release("b")  # someone took it over since: their claim stays
    assert store.claim_path("b").exists()
    store.release_all()
    assert not store.claim_path("c").exists() and not store.claim_path("d").exists()


def test_runner_takes_over_a_dead_claim_releases_on_failure_and_waits(
    tmp_path, tiny_grid, monkeypatch, capsys
):
    config = GridConfig(methods=["clean"], out=str(tmp_path / "g"), **tiny_grid)
    (cell,) = config.cells()
    store = ResultStore(config.out)
    write_claim(store, cell.cell_id, dead_pid(), this_host())
    real_run_cell = runner_module.run_cell

    def failing(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner_module, "run_cell", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_grid(config)
    assert not store.claim_path(cell.cell_id).exists()  # released although the cell failed
    monkeypatch.setattr(runner_module, "run_cell", real_run_cell)
    # A live claimant: wait for it; when it gives up without a record, run the cell here.
    claim = write_claim(store, cell.cell_id, os.getppid(), this_host())
    waits = []

    def claimant_gives_up(seconds: float) -> None:  # the runner's wait between checks
        waits.append(seconds)
        claim.unlink()

    monkeypatch.setattr(runner_module, "time", SimpleNamespace(sleep=claimant_gives_up))
    table = run_grid(config)
    assert list(table["method"]) == ["clean"] and waits == [runner_module.WAIT_POLL_S]
    assert f"1 cell running elsewhere (pid {os.getppid()} on" in capsys.readouterr().out


# --- plugins' code in their identity --------------------------------------------------------------

PLUGIN = '''
import torch
from uebench.method import Method
from uebench.poison import Poison


class Probe(Method):
    """A test plugin."""

    def __init__(self, *, eps: float = 8 / 255) -> None:
        self.eps = eps

    def craft(self, data, ctx):
        delta = torch.full((1, *data.image_shape), SIGN * self.eps)
        rows = torch.zeros(len(data.y_train), dtype=torch.long)
        return Poison(delta, rows, self.eps, {"form": "class"})
'''


def install_probe(site: Path, module: str, version: str, origin: str) -> Path:
    """``module`` as distribution ``probe-dist`` with entry point ``probe``; ``origin``:
    ``release`` (its RECORD lists the file) or ``editable`` (PEP 610 says so)."""
    file = site / f"{module}.py"
    file.write_text("SIGN = 1.0\n" + PLUGIN)
    for old in site.glob("probe_dist-*.dist-info"):
        for part in old.iterdir():
            part.unlink()
        old.rmdir()
    info = site / f"probe_dist-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: probe-dist\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[uebench.methods]\nprobe = {module}:Probe\n")
    if origin == "release":
        (info / "RECORD").write_text(f"{module}.py,,\n{info.name}/METADATA,,\n")
    else:
        url = {"url": f"file://{site}", "dir_info": {"editable": True}}
        (info / "direct_url.json").write_text(json.dumps(url))
    return file


def probe_identity(module: str) -> tuple[str, str]:
    """The probe's poison key and a cell id, with the module imported afresh."""
    sys.modules.pop(module, None)
    cell = Cell("digits:size=8", "probe", "none", "smallcnn:width=4", 0, TrainConfig(epochs=1))
    return poison_key("probe", "fingerprint", None), cell.cell_id


@pytest.fixture
def site(tmp_path, monkeypatch):
    import uebench.version as version

    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # an edit within a second is seen
    # The installed distributions are read once per process; earlier tests read them before
    # this fake one existed.
    version._entry_point_distributions.cache_clear()
    version._packages_distributions.cache_clear()
    yield folder
    version._entry_point_distributions.cache_clear()
    version._packages_distributions.cache_clear()


def test_editing_an_editable_plugin_means_a_new_poison_and_cell_id(site):
    module = "probe_editable_plugin"
    file = install_probe(site, module, "1.0", "editable")
    try:
        key, cell_id = probe_identity(module)
        assert (key, cell_id) == probe_identity(module)  # unchanged code: same identity
        file.write_text(file.read_text().replace("SIGN = 1.0", "SIGN = -1.0"))
        changed_key, changed_id = probe_identity(module)
        assert changed_key != key and changed_id != cell_id
        (plugin,) = spec_plugins("methods", "probe")
        assert plugin["distribution"] == "probe-dist" and plugin["version"] == "1.0"
        assert plugin["origin"] == "editable" and len(plugin["source_sha256"]) == 64
    finally:
        sys.modules.pop(module, None)


def test_a_released_plugin_is_identified_by_its_version(site):
    module = "probe_released_plugin"
    install_probe(site, module, "1.0", "release")
    try:
        key, cell_id = probe_identity(module)
        identity = method_identity("probe")
        assert identity["code"] == {"distribution": "probe-dist", "version": "1.0"}
        install_probe(site, module, "1.1", "release")
        assert probe_identity(module)[0] != key and probe_identity(module)[1] != cell_id
    finally:
        sys.modules.pop(module, None)


def test_a_plugin_registered_at_run_time_is_hashed(tmp_path, monkeypatch):
    file = tmp_path / "probe_runtime_plugin.py"
    file.write_text("SIGN = 1.0\n" + PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import probe_runtime_plugin

    try:
        monkeypatch.setitem(METHODS._extra, "probe-rt", probe_runtime_plugin.Probe)
        code = method_identity("probe-rt")["code"]
        assert list(code) == ["source_sha256"] and len(code["source_sha256"]) == 64
        (plugin,) = spec_plugins("methods", "probe-rt")
        assert plugin["origin"] == "path" and plugin["distribution"] is None
    finally:
        sys.modules.pop("probe_runtime_plugin", None)


def test_builtin_plugins_keep_their_identity_and_are_listed_in_records():
    assert "code" not in method_identity("emin:source=[smallcnn:width=4]")
    plugins = spec_plugins("methods", "emin:source=[smallcnn:width=4]")
    assert [(p["kind"], p["name"], p["origin"]) for p in plugins] == [
        ("methods", "emin", "builtin"),
        ("archs", "smallcnn", "builtin"),
    ]
    assert plugins[0]["distribution"] == "uebench" and "source_sha256" not in plugins[0]
    assert [p["name"] for p in spec_plugins("defenses", "cutout+earlystop")] == [
        "cutout",
        "earlystop",
    ]


# --- temporary files of dead writers ------------------------------------------------------------


def test_atomic_write_names_its_writer_and_dead_writers_files_are_removed(tmp_path):
    seen = []
    atomic_write(tmp_path / "KEY.pt", lambda stream: seen.extend(os.listdir(tmp_path)))
    (name,) = seen
    tag = f".KEY.pt.{os.getpid()}@{this_host()}."
    assert name.startswith(tag) and name.endswith(".tmp")
    cache = tmp_path / "cache"
    cache.mkdir()
    random_part = name[len(tag) :]
    killed = cache / f".KEY.pt.{dead_pid()}@{this_host()}.{random_part}"  # kill -9 mid-write
    writing = cache / f".OTHER.pt.{os.getpid()}@{this_host()}.{random_part}"  # a live writer
    remote = cache / f".R.pt.{dead_pid()}@another-host.{random_part}"  # cannot be asked
    legacy = cache / ".OLD.pt.abcd1234.tmp"  # named before writers were tagged
    ancient = cache / ".ANCIENT.pt.abcd1234.tmp"
    for path in (killed, writing, remote, legacy, ancient):
        path.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(ancient, (two_hours_ago, two_hours_ago))
    PoisonCache(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        p.name for p in (writing, remote, legacy)
    )
    os.utime(remote, (two_hours_ago, two_hours_ago))
    assert remove_stale_temporaries(cache) == [remote]


def test_result_store_removes_dead_writers_files(tmp_path):
    cells = tmp_path / "cells"
    cells.mkdir()
    leftover = cells / f".abc.json.{dead_pid()}@{this_host()}.x1y2z3.tmp"
    leftover.write_text("{")
    ResultStore(tmp_path)
    assert not leftover.exists()


# --- the API reads a spec as the runner does -----------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return uebench.load("digits:size=8", train_size=100, test_size=50)


def test_craft_applies_classes_as_the_runner_does(digits):
    poison = uebench.craft("random:classes=0,1", digits, device="cpu", progress=False)
    chosen = digits.y_train <= 1
    assert bool((poison.rows[chosen] >= 0).all()) and bool((poison.rows[~chosen] == -1).all())
    whole = uebench.craft("random", digits, device="cpu", progress=False)
    assert torch.equal(spec_poison("random:classes=0,1", whole, digits).rows, poison.rows)
    with pytest.raises(UebenchError, match="unknown class"):
        uebench.craft("random:classes=zebra", digits, device="cpu", progress=False)


def test_load_defaults_to_the_datasets_uebench_run_uses():
    assert inspect.signature(uebench.load).parameters["dataset"].default == GridConfig().dataset
