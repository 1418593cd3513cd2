"""Issue 22: no silent wrong result from a plugin, a cache file or a stub record; no hang.

Each test pins one case of the outside probe: the harness refuses (one line, before any work,
naming the culprit) or recomputes (one warning line) instead of using a wrong input.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_cli import TINY_CLI, one_line_error

from uebench.cli import main
from uebench.countermeasure import Countermeasure, TrainSet
from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.grid.cell import load_cell_data
from uebench.grid.outcome import CellsFailed
from uebench.identity import poison_key
from uebench.method import CraftContext, Method, craft_within_threat
from uebench.poison import Poison
from uebench.registry import DEFENSES, METHODS
from uebench.storage.cache import PoisonCache
from uebench.threat import ThreatModel
from uebench.training import TrainConfig

TINY = [*TINY_CLI, "--no-progress"]


def tiny_data() -> ImageData:
    return load_dataset("digits:size=8", train_size=200, test_size=100, seed=0)


# --------------------------------------------------------------------------- 1: shared data


class LabelThief(Method):
    """Returns honest random noise, but zeroes the shared training labels on the way."""

    def __init__(self, *, eps: float = 8 / 255) -> None:
        self.eps = eps

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        data.y_train[:] = 0
        rows = torch.arange(len(data.y_train))
        return Poison(torch.zeros(len(rows), *data.image_shape), rows, self.eps)


class LabelVandal(Countermeasure):
    """Standard training, but relabels a few shared training labels in ``prepare``."""

    def prepare(self, train: TrainSet, generator: torch.Generator) -> TrainSet:
        train.y[:5] = (train.y[:5] + 1) % int(train.num_classes or 2)
        return train


@pytest.mark.parametrize(
    ("method", "defense", "culprit", "tensor"),
    [
        ("label-thief", "none", "method 'label-thief'", "y_train"),
        ("clean", "label-vandal", "countermeasure 'label-vandal'", "y_train"),
    ],
)
def test_a_plugin_that_changes_the_shared_data_is_refused_by_name(
    tmp_path, tiny_grid, monkeypatch, method, defense, culprit, tensor
) -> None:
    monkeypatch.setitem(METHODS._extra, "label-thief", LabelThief)
    monkeypatch.setitem(DEFENSES._extra, "label-vandal", LabelVandal)
    load_cell_data.cache_clear()
    pristine = tiny_data()
    grid = {**tiny_grid, "methods": [method], "defenses": [defense], "out": str(tmp_path / "o")}
    with pytest.raises(UebenchError) as error:
        run_grid(GridConfig(**grid))
    message = str(error.value)
    assert culprit in message and tensor in message and "\n" not in message
    assert not list((tmp_path / "o" / "cells").glob("*.json"))  # no record of a wrong result
    # Later cells of the process load the data afresh, not the altered copy.
    again = load_cell_data("digits:size=8", None, 200, 100)
    assert torch.equal(again.y_train, pristine.y_train)


# --------------------------------------------------------------------------- 2: cache hits


def test_a_cache_file_copied_under_another_key_is_refused(tmp_path) -> None:
    data = tiny_data()
    cache = PoisonCache(tmp_path / "cache")
    ctx = CraftContext(torch.device("cpu"), TrainConfig(), False, cache)
    ctx.craft("random", data)
    real = poison_key("random", data.fingerprint(), TrainConfig().as_dict())
    other = poison_key("random:seed=1", data.fingerprint(), TrainConfig().as_dict())
    shutil.copy(cache.path(real), cache.path(other))
    with pytest.raises(UebenchError, match=f"holds the poison of key {real}, not {other}") as error:
        ctx.craft("random:seed=1", data)
    assert "delete it to recompute" in str(error.value)


def forged_unbounded(cache: PoisonCache, key: str, data: ImageData) -> None:
    """A file with a correct content hash and its own key, but no budget at all."""
    rows = torch.arange(len(data.y_train))
    delta = torch.full((len(rows), *data.image_shape), 0.5)
    Poison(delta, rows, ThreatModel.unbounded(), meta={"cache_key": key}).save(cache.path(key))


def test_a_forged_cache_file_beyond_the_methods_threat_model_is_refused(tmp_path) -> None:
    data = tiny_data()
    cache = PoisonCache(tmp_path / "cache")
    key = poison_key("random", data.fingerprint(), TrainConfig().as_dict())
    forged_unbounded(cache, key, data)
    ctx = CraftContext(torch.device("cpu"), TrainConfig(), False, cache)
    with pytest.raises(UebenchError, match="declares L∞ ≤ 8/255 but its poison cache file"):
        ctx.craft("random", data)


def test_the_ray_driver_checks_its_cache_hits_too(tmp_path) -> None:
    from uebench.grid.ray_backend import _cached  # no Ray needed: the driver's own check

    data = tiny_data()
    cache = PoisonCache(tmp_path / "cache")
    key = poison_key("random", data.fingerprint(), TrainConfig().as_dict())
    forged_unbounded(cache, key, data)
    with pytest.raises(UebenchError, match="declares L∞ ≤ 8/255 but its poison cache file"):
        _cached(cache, key, "random")
    other = poison_key("random:seed=1", data.fingerprint(), TrainConfig().as_dict())
    shutil.copy(cache.path(key), cache.path(other))
    with pytest.raises(UebenchError, match=f"holds the poison of key {key}"):
        _cached(cache, other, "random:seed=1")
    cache.path(key).write_bytes(b"garbage")
    with pytest.raises(UebenchError, match=r"corrupt .*delete it to recompute"):
        _cached(cache, key, "random")


# --------------------------------------------------------------------------- 3: stub records


def test_stub_and_non_object_records_are_recomputed_with_one_warning(
    tmp_path, tiny_grid, capsys
) -> None:
    config = GridConfig(**{**tiny_grid, "methods": ["clean"], "seeds": [0, 1, 2]})
    config.out = str(tmp_path / "o")
    ids = [cell.cell_id for cell in config.cells()]
    cells = tmp_path / "o" / "cells"
    cells.mkdir(parents=True)
    (cells / f"{ids[0]}.json").write_text(json.dumps({"cell_id": ids[0]}))
    (cells / f"{ids[1]}.json").write_text(json.dumps([ids[1]]))
    (cells / f"{ids[2]}.json").write_text(json.dumps(ids[2]))
    table = run_grid(config)
    assert sorted(table["cell_id"]) == sorted(ids) and table["final_acc"].notna().all()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 3, warnings  # one per bad file, however often it was read
    assert all(line.startswith("uebench: warning: record ") for line in warnings)
    assert all("recomputed" in line for line in warnings)


# --------------------------------------------------------------------------- 4: hangs


def test_an_unreachable_ray_address_is_one_line_within_seconds(tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    started = time.perf_counter()
    out = str(tmp_path / "o")
    code = main(["run", *TINY, "--methods", "clean", "--out", out, "--backend", "ray",
                 "--address", "127.0.0.1:1"])  # fmt: skip
    message = one_line_error(capsys, code)
    assert "cannot reach the Ray cluster at '127.0.0.1:1'" in message
    assert time.perf_counter() - started < 30


def test_a_huge_grid_is_refused_before_any_work(tmp_path, capsys, no_work) -> None:
    out = ["--out", str(tmp_path / "o"), "--methods", "clean"]
    started = time.perf_counter()
    message = one_line_error(capsys, main(["run", *TINY, *out, "--seeds", "0-100000000"]))
    assert "100000001 seeds" in message and time.perf_counter() - started < 10
    message = one_line_error(
        capsys, main(["run", *TINY, *out, "--seeds", "0-9", "--max-cells", "5"])
    )
    assert "10 cells" in message and "max-cells" in message
    assert len(GridConfig(methods=["clean"], seeds="0-2", max_cells=3).cells()) == 3
    with pytest.raises(UebenchError, match=r"4 cells .*max_cells=3"):
        GridConfig(methods=["clean"], seeds="0-3", max_cells=3).cells()
    with pytest.raises(UebenchError, match=r"10001 cells .*max_cells=10000"):
        GridConfig(methods=["clean"], seeds="0-10000").cells()  # the default bound


# --------------------------------------------------------------------------- 5: one line


def test_unusable_result_places_are_one_line_before_any_work(tmp_path, capsys, no_work) -> None:
    blocked = tmp_path / "cells-file"
    blocked.mkdir()
    (blocked / "cells").write_text("in the way")
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(blocked)]))
    assert "cells" in message and "is a file" in message
    table_dir = tmp_path / "csv-dir"
    (table_dir / "results.csv").mkdir(parents=True)
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(table_dir)]))
    assert "results.csv" in message and "in the way" in message
    long = tmp_path / ("x" * 300)
    message = one_line_error(capsys, main(["run", *TINY, "--out", str(long)]))
    assert "300 bytes" in message and "255" in message
    message = one_line_error(capsys, main(["run", *TINY, "--out", ""]))
    assert "out: expected a folder name" in message


def test_ray_with_an_unusable_out_is_one_line(tmp_path, capsys) -> None:
    pytest.importorskip("ray")
    (tmp_path / "file").write_text("")
    args = ["run", *TINY, "--backend", "ray", "--out", str(tmp_path / "file" / "o")]
    message = one_line_error(capsys, main(args))
    assert "is a file" in message


def test_a_deeply_nested_spec_is_one_line(tmp_path, capsys, no_work) -> None:
    spec = "emin:source=" + "[" * 1000 + "smallcnn" + "]" * 1000
    args = ["run", *TINY, "--out", str(tmp_path / "o"), "--methods", spec]
    message = one_line_error(capsys, main(args))
    assert "nest deeper" in message and len(message) < 300


def test_diagnose_on_a_malformed_record_is_one_line(tmp_path, capsys) -> None:
    cells = tmp_path / "run" / "cells"
    cells.mkdir(parents=True)
    record = {"cell_id": "00aa", "dataset": "d", "method": "m", "defense": "n", "arch": "a",
              "seed": 0, "final_acc": 50.0, "history": []}  # fmt: skip
    (cells / "00aa.json").write_text(json.dumps(record))
    message = one_line_error(capsys, main(["diagnose", str(tmp_path / "run")]))
    assert "00aa" in message and "malformed" in message


def test_report_into_an_existing_file_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "run" / "cells").mkdir(parents=True)
    (tmp_path / "page.html").write_text("mine")
    args = ["report", str(tmp_path / "run"), "-o", str(tmp_path / "page.html")]
    message = one_line_error(capsys, main(args))
    assert "is a file" in message and (tmp_path / "page.html").read_text() == "mine"


# --------------------------------------------------------------------------- 6: clear output


class NaNNoise(Method):
    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        rows = torch.arange(len(data.y_train))
        return Poison(torch.full((len(rows), *data.image_shape), float("nan")), rows, 8 / 255)


def test_bad_noise_is_refused_naming_the_method() -> None:
    ctx = CraftContext(torch.device("cpu"), TrainConfig(), False)
    with pytest.raises(UebenchError, match=r"method 'nan-noise:x=1' failed while crafting: .*NaN"):
        craft_within_threat(NaNNoise(), tiny_data(), ctx, "nan-noise:x=1")


def test_an_empty_list_item_is_named_as_such(tmp_path, capsys, no_work) -> None:
    args = ["run", *TINY, "--out", str(tmp_path / "o"), "--methods", "clean,,clean"]
    message = one_line_error(capsys, main(args))
    assert "empty item between two commas" in message and "is not a name" not in message


def test_a_one_class_dataset_is_refused(tmp_path, tiny_grid) -> None:
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "one.npz",
        x_train=rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8),
        y_train=np.zeros(20, np.int64),
        x_test=rng.integers(0, 256, (10, 6, 6, 3), dtype=np.uint8),
        y_test=np.zeros(10, np.int64),
    )
    grid = {**tiny_grid, "dataset": f"npz:{tmp_path / 'one.npz'}", "train_size": None,
            "test_size": None, "methods": ["clean"], "out": str(tmp_path / "o")}  # fmt: skip
    with pytest.raises(UebenchError, match="has 1 class; a benchmark needs at least 2"):
        run_grid(GridConfig(**grid))


def test_a_failed_grid_says_where_its_results_are(tmp_path) -> None:
    message = str(CellsFailed(["a/none/x/seed 0"], 4, tmp_path / "o"))
    assert str(tmp_path / "o" / "cells") in message and "results.csv" in message


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of ``root`` (from /proc)."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start) in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                frontier.append(pid)
    return found


def _alive(pid: int, start: str) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == start and fields[0] != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_a_ray_driver_killed_with_sigkill_leaves_no_ray_process(tmp_path) -> None:
    pytest.importorskip("ray")
    if not Path("/proc/self/stat").exists():
        pytest.skip("the orphan guard reads /proc (Linux)")
    args = ["run", *TINY, "--epochs", "500", "--methods", "clean", "--backend", "ray",
            "--out", str(tmp_path / "o")]  # fmt: skip
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from uebench.cli import main; main(sys.argv[1:])",
            *args,
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # until the raylet's agents run
            tree = _descendants(driver.pid)
            names = [_cmdline(pid) for pid in tree if _alive(pid, tree[pid])]
            guarded = any(b"select" in name for name in names)  # the orphan guard runs
            if guarded and any(b"Agent" in name for name in names):
                break
            time.sleep(1)
        else:
            pytest.fail("the Ray instance did not start")
        time.sleep(3)  # the guard's once-a-second look at the processes
        tree = {
            pid: start
            for pid, start in _descendants(driver.pid).items()
            if b"select" not in _cmdline(pid)  # the guard itself ends when its driver does
        }
    finally:
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p, s) for p, s in tree.items()):
        time.sleep(1)
    left = [pid for pid, start in tree.items() if _alive(pid, start)]
    for pid in left:  # do not leak them into the rest of the session
        os.kill(pid, signal.SIGKILL)
    assert not left, [_cmdline(pid)[:80] for pid in left]
