"""docs/plugins.md's contract, held to the example package it shows (examples/plugin_package).

The package is pip-installed (offline: no dependencies, no build isolation) into a folder put
on ``PYTHONPATH``, as an outside user's package would be, and both of its plugins run through
``uebench run`` in a fresh process, so its entry points are read as any install's are.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from tiny_cli import TINY_CLI

from uebench.cli import main
from uebench.countermeasure import TrainSet
from uebench.errors import UebenchError
from uebench.method import CraftContext
from uebench.registry import DEFENSES, METHODS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "plugin_package"
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE_FILES = {
    "examples/plugin_package/pyproject.toml",
    "examples/plugin_package/src/uebench_example_plugins/stripes.py",
    "examples/plugin_package/src/uebench_example_plugins/median_filter.py",
}
TINY = [*TINY_CLI, "--threads", "1"]


def test_the_docs_show_the_example_files_byte_for_byte():
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", DOC.read_text(), re.S)
    assert {path for path, _ in blocks} == EXAMPLE_FILES
    for path, body in blocks:
        assert (ROOT / path).read_text() == body, f"docs/plugins.md's copy of {path} differs"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example package installed into a folder (from a copy: the checkout stays clean).

    pip builds it with setuptools from this environment (offline, seconds).  Where setuptools
    is not installed (Python 3.12+ venvs lack it), the install is written by hand instead: the
    package's files and a ``.dist-info`` with the entry points its pyproject.toml declares.
    """
    work = tmp_path_factory.mktemp("plugin_package")
    source = work / "source"
    shutil.copytree(PACKAGE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    if importlib.util.find_spec("setuptools") is None:
        return install_by_hand(source, target)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*command, "--no-index", "--target", str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return target


def install_by_hand(source: Path, target: Path) -> Path:
    """What pip would install from ``source``, for an environment without setuptools."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    shutil.copytree(source / "src", target)
    info = target / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    groups = project["entry-points"]
    (info / "entry_points.txt").write_text(
        "".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in entries.items())
            for group, entries in groups.items()
        )
    )
    url = {"url": source.as_uri(), "dir_info": {}}  # as pip records an install from a folder
    (info / "direct_url.json").write_text(json.dumps(url))
    return target


@pytest.fixture
def on_path(installed, monkeypatch) -> Path:
    """The installed package importable (and its entry points visible) in this process."""
    monkeypatch.syspath_prepend(str(installed))
    return installed


def test_example_plugins_run_through_the_cli(installed, tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-c",
        "import sys; from uebench.cli import main; sys.exit(main())",
        "run",
        *TINY,
        "--methods",
        "clean,stripes:period=3",
        "--defenses",
        "none,median-filter:on=batch",
        "--out",
        str(out),
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(path.read_text()) for path in (out / "cells").glob("*.json")]
    assert sorted((r["method"], r["defense"]) for r in records) == [
        ("clean", "median-filter:on=batch"),
        ("clean", "none"),
        ("stripes:period=3", "median-filter:on=batch"),
        ("stripes:period=3", "none"),
    ]
    for record in records:
        if record["method"].startswith("stripes"):
            assert record["poison"]["form"] == "class" and record["poison"]["period"] == 3.0
            assert record["poison"]["poisoned_fraction"] == 1.0
        if record["defense"].startswith("median"):
            assert record["countermeasure_notes"] == {"median_size": 3, "median_on": "batch"}
        plugins = {p["name"]: p for p in record["plugins"]}
        assert plugins["smallcnn"]["origin"] == "builtin"
    stripes = next(r for r in records if r["method"].startswith("stripes"))
    plugin = {p["name"]: p for p in stripes["plugins"]}["stripes"]
    assert (plugin["distribution"], plugin["version"]) == ("uebench-example-plugins", "0.1.0")
    assert plugin["origin"] == "local" and len(plugin["source_sha256"]) == 64  # pip install DIR


def test_example_options_are_typed_and_checked(on_path, tmp_path, capsys):
    assert "stripes" in METHODS.names() and "median-filter" in DEFENSES.names()
    options = METHODS.resolve("stripes:eps=16/255:period=6").options
    assert options["eps"] == pytest.approx(16 / 255) and options["period"] == 6.0
    with pytest.raises(UebenchError, match="'sideways' is not one of dataset, batch"):
        DEFENSES.resolve("median-filter:on=sideways")
    with pytest.raises(UebenchError, match="size must be odd"):
        DEFENSES.build("median-filter:size=4")
    out = ["--out", str(tmp_path / "bad"), "--no-progress"]
    assert main(["run", *TINY, "--methods", "stripes:period=1", *out]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()  # one line, no traceback
    assert line.startswith("uebench: error: ") and "period must be at least 2 pixels, got 1" in line


def test_stripes_is_class_wise_within_eps_and_seeded(on_path):
    y = torch.arange(40) % 4
    x = torch.zeros(40, 3, 8, 8, dtype=torch.uint8)
    from uebench.data import ImageData

    data = ImageData("toy", x, y, x[:4], y[:4], ("a", "b", "c", "d"))
    ctx = CraftContext(torch.device("cpu"), progress=False)
    poison = METHODS.build("stripes:eps=8/255").craft(data, ctx)
    assert poison.delta.shape == (4, 3, 8, 8) and torch.equal(poison.rows, y)
    assert float(poison.delta.abs().max()) <= 8 / 255 + 1e-7
    assert not torch.allclose(poison.delta[0], poison.delta[1])  # a pattern per class
    again = METHODS.build("stripes:eps=8/255").craft(data, ctx)
    assert torch.equal(poison.delta, again.delta)
    other = METHODS.build("stripes:eps=8/255:seed=1").craft(data, ctx)
    assert not torch.equal(poison.delta, other.delta)


def test_median_filter_removes_salt_once_or_every_batch(on_path):
    x = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3, 4] = 255  # one bright pixel: a 3×3 median removes it
    train = TrainSet(x, torch.zeros(2, dtype=torch.long), x, torch.ones(2, dtype=torch.bool))
    generator = torch.Generator().manual_seed(0)
    once = DEFENSES.build("median-filter").prepare(train, generator)
    assert int(once.x.max()) == 0 and once.notes["median_on"] == "dataset"
    batch = DEFENSES.build("median-filter:on=batch")
    assert torch.equal(batch.prepare(train, generator).x, x)  # left for the batches
    filtered, _ = batch.augment(x.float() / 255, train.y)
    assert float(filtered.max()) == 0.0
