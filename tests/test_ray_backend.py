"""The Ray backend on a real local Ray instance (2 CPUs, no dashboard), started once per module.

Each test runs a seconds-long grid (``tiny_grid``) and checks one promise of the backend: the
same records as the local backend, each poison crafted once, a killed driver resumes, a killed
worker's cell is retried, a raising cell is reported and the grid goes on.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')

import ray_plugins  # noqa: E402 - after the skip: only these tests need it

import uebench  # noqa: E402
from uebench.cli import main  # noqa: E402
from uebench.errors import UebenchError  # noqa: E402
from uebench.files import this_host  # noqa: E402
from uebench.grid import GridConfig, ResultStore  # noqa: E402
from uebench.grid.outcome import CellsFailed  # noqa: E402
from uebench.grid.ray_backend import Resources, choose_resources  # noqa: E402
from uebench.poison import Poison  # noqa: E402
from uebench.registry import DEFENSES, METHODS  # noqa: E402

PLUGINS = {
    METHODS: {"counted": ray_plugins.CountedNoise},
    DEFENSES: {"die-once": ray_plugins.DieOnce, "explode": ray_plugins.Explode},
}

#: Record fields that say when, where and how fast a cell ran, not what it found.
VOLATILE = {"wall_time_s", "craft_time_s", "finished_at", "backend", "node", "ray_node_id"}


@pytest.fixture(scope="module")
def cluster():
    """One Ray instance for the module; run_grid_ray uses an initialized Ray as it is."""
    ray.cloudpickle.register_pickle_by_value(ray_plugins)
    for registry, plugins in PLUGINS.items():
        for name, factory in plugins.items():
            registry.register(name, factory)
    context = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()
        for registry, plugins in PLUGINS.items():
            for name in plugins:
                registry._extra.pop(name, None)
        ray.cloudpickle.unregister_pickle_by_value(ray_plugins)


def records(out: Path) -> dict[str, dict]:
    return {r["cell_id"]: r for r in ResultStore(out).records()}


def comparable(record: dict) -> dict:
    """A record without its volatile fields (and the cache folder, which differs per run)."""
    kept = {k: v for k, v in record.items() if k not in VOLATILE}
    kept["history"] = [{k: v for k, v in e.items() if k != "seconds"} for e in record["history"]]
    kept["config"] = {k: v for k, v in record["config"].items() if k != "cache_dir"}
    return kept


def test_records_equal_the_local_backends(cluster, tiny_grid, tmp_path):
    grid = {**tiny_grid, "methods": ["clean", "random:form=class"], "threads": 1}
    local = uebench.run(**grid, out=str(tmp_path / "local" / "out"))
    remote = uebench.run(**grid, out=str(tmp_path / "ray" / "out"), backend="ray")
    pd.testing.assert_frame_equal(
        local.drop(columns="wall_time_s"), remote.drop(columns="wall_time_s")
    )
    mine, theirs = records(tmp_path / "local" / "out"), records(tmp_path / "ray" / "out")
    assert sorted(mine) == sorted(theirs) and len(mine) == 2
    for cell_id, record in theirs.items():
        assert record["backend"] == "ray" and record["threads"] == 1 and record["ray_node_id"]
        assert mine[cell_id]["backend"] == "local" and mine[cell_id]["node"] == record["node"]
        assert comparable(record) == comparable(mine[cell_id])
    # The Ray run crafted its own poisons (a fresh cache), into the driver's cache.
    assert len(list((tmp_path / "ray" / "cache").glob("*.pt"))) == 2


def test_each_poison_is_crafted_once(cluster, tiny_grid, tmp_path):
    folder = tmp_path / "crafted"
    counted = f"counted:folder={folder}"
    mix = f"mix:first=[{counted}]:second=[{counted}:seed=1]"
    # Six cells, three grid poisons (counted, mix, and counted again under classes=), and one
    # poison only mix needs (counted:seed=1): counted must be crafted once, not again for mix.
    grid = {**tiny_grid, "methods": [counted, f"{counted}:classes=0,1", mix], "seeds": [0, 1]}
    table = uebench.run(**grid, out=str(tmp_path / "out"), backend="ray")
    assert len(table) == 6
    crafted = sorted(path.name.split("-")[0] for path in folder.iterdir())
    assert crafted == ["seed0", "seed1"]
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 3  # counted, counted:seed=1, mix
    # Saved under the driver's keys (a plugin shipped by value hashes differently on workers).
    assert all(Poison.load(path).meta["cache_key"] == path.stem for path in cached)
    # A later local run on the same cache crafts nothing.
    uebench.run(**grid, out=str(tmp_path / "local"), cache_dir=str(tmp_path / "cache"))
    assert len(list(folder.iterdir())) == 2


def test_killed_driver_resumes_without_duplicates(cluster, tiny_grid, tmp_path, capsys):
    out = tmp_path / "out"
    grid = {
        **tiny_grid,
        "methods": ["clean", "random", "random:form=class"],
        "seeds": [0, 1],
    }
    # The killed driver runs one cell at a time (2 CPUs per cell, 1 thread): one fresh worker
    # process to warm up instead of two, and five cells left to resume.
    first = {**grid, "out": str(out), "cpus_per_cell": 2, "threads": 1}
    script = (
        "import json, sys, uebench; "
        "uebench.run(**json.loads(sys.argv[1]), backend='ray', address=sys.argv[2])"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(first), cluster],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((out / "cells").glob("*.json")) and time.monotonic() < deadline:
            assert driver.poll() is None, "the driver ended before any cell finished"
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    before = {path.name: path.read_bytes() for path in (out / "cells").glob("*.json")}
    assert 1 <= len(before) < 6, "the kill must land mid-grid"

    table = uebench.run(**{**grid, "progress": True}, out=str(out), backend="ray")
    assert f"{len(before)} of 6 cells already done" in capsys.readouterr().out
    assert len(table) == 6 and table["cell_id"].is_unique
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == 6 and csv["cell_id"].is_unique
    for name, content in before.items():  # finished cells were not rerun
        assert (out / "cells" / name).read_bytes() == content
    files = sorted(path.name for path in out.rglob("*") if path.is_file())
    expected = {"results.csv", ".claims.lock"}
    stray = [name for name in files if not name.endswith(".json") and name not in expected]
    assert not stray, f"left behind: {stray}"
    for path in (out / "cells").glob("*.json"):
        json.loads(path.read_text())


def test_killed_worker_is_retried_and_recorded_once(cluster, tiny_grid, tmp_path):
    marker = tmp_path / "died"
    grid = {**tiny_grid, "methods": ["clean"], "defenses": [f"die-once:marker={marker}"]}
    table = uebench.run(**grid, out=str(tmp_path / "out"), backend="ray")
    assert marker.exists(), "the first attempt did not kill its worker"
    assert int(marker.read_text()) != os.getpid()
    assert len(table) == 1 and len(records(tmp_path / "out")) == 1


def test_raising_cell_is_reported_and_the_grid_goes_on(cluster, tiny_grid, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--backend", "ray", "--out", str(out), "--no-progress"]
    argv += ["--methods", "clean", "--defenses", "none,explode"]
    for key in ("dataset", "archs", "epochs", "train_size", "test_size", "device"):
        value = tiny_grid[key]
        shown = ",".join(value) if isinstance(value, list) else str(value)
        argv += [f"--{key.replace('_', '-')}", shown]
    assert main(argv) == 2
    err = capsys.readouterr().err
    failed = [line for line in err.splitlines() if line.startswith("uebench: cell failed:")]
    assert len(failed) == 1
    assert "defense=explode" in failed[0] and "RuntimeError: exploded on purpose" in failed[0]
    assert "uebench: error: 1 of 2 cells failed" in err
    kept = records(out)
    assert [r["defense"] for r in kept.values()] == ["none"]
    assert len(pd.read_csv(out / "results.csv")) == 1


def test_python_api_raises_cells_failed(cluster, tiny_grid, tmp_path):
    grid = {**tiny_grid, "methods": ["clean"], "defenses": ["explode"], "backend": "ray"}
    with pytest.raises(CellsFailed, match="1 of 1 cells failed"):
        uebench.run(**grid, out=str(tmp_path / "out"))


def test_resource_defaults_follow_the_cluster():
    config = GridConfig()
    assert choose_resources(config, {"CPU": 8.0}) == Resources(cpus=1, gpus=0, threads=1)
    assert choose_resources(config, {"CPU": 8.0, "GPU": 2.0}).gpus == 1
    assert choose_resources(GridConfig(device="cpu"), {"GPU": 2.0}).gpus == 0
    flags = GridConfig(backend="ray", cpus_per_cell=2.5, gpus_per_cell=0.5)
    assert choose_resources(flags, {"GPU": 2.0}) == Resources(cpus=2.5, gpus=0.5, threads=2)
    assert choose_resources(GridConfig(threads=3), {}) == Resources(cpus=3, gpus=0, threads=3)


def test_missing_ray_is_one_line(monkeypatch, tiny_grid, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without Ray
    with pytest.raises(uebench.UebenchError, match=r'needs Ray: pip install -e "\.\[ray\]"'):
        uebench.run(**tiny_grid, backend="ray", out=str(tmp_path / "out"))


def test_only_the_ray_backend_imports_ray_and_only_when_it_runs():
    """The base install never imports Ray: no module but ray_backend names it, and that one
    only inside functions (an AST check: a subprocess importing uebench costs seconds)."""
    root = Path(uebench.__file__).parent
    plugins = [root.parent / "methods", root.parent / "attacks_defenses"]
    for path in [*root.rglob("*.py"), *(p for folder in plugins for p in folder.rglob("*.py"))]:
        tree = ast.parse(path.read_text())
        top_level = set(tree.body)
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(name == "ray" or name.startswith("ray.") for name in names):
                assert path.name == "ray_backend.py", f"{path} imports Ray"
                assert node not in top_level, f"{path} imports Ray at import time"


def test_dead_drivers_claims_on_finished_cells_are_swept(tiny_grid, tmp_path):
    """A driver killed between writing a record and releasing its claim leaves the claim."""
    out = tmp_path / "out"
    grid = {**tiny_grid, "methods": ["clean"], "out": str(out)}
    (cell_id,) = uebench.run(**grid)["cell_id"]
    dead = subprocess.Popen(["true"])
    dead.wait()
    claim = ResultStore(out).claim_path(cell_id)
    claim.write_text(json.dumps({"pid": dead.pid, "host": this_host(), "started": time.time()}))
    uebench.run(**grid, backend="ray")  # nothing to run: Ray is not even started
    assert not claim.exists()


def test_a_grid_the_data_refuses_leaves_no_claim_behind(tiny_grid, tmp_path):
    """The data's checks run after the Ray driver claimed its cells: the claims go with it."""
    out = tmp_path / "out"
    grid = {**tiny_grid, "methods": ["clean"], "defenses": ["grayscale"], "out": str(out)}
    with pytest.raises(UebenchError, match="grayscale needs 3-channel"):
        uebench.run(**grid, backend="ray")  # digits has one channel; Ray is not started
    assert not list((out / "cells").glob("*.claim"))
