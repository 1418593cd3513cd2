"""Plugins named by ``--plugin NAME=module:Class`` or ``UEBENCH_PLUGINS``, never installed.

Each test writes a plugin module into its own folder, puts the folder on the import path (as
PYTHONPATH would) and drives the command line: registration by base class, an identity that
follows the source file, one-line errors before any work, explicit overrides named in the
record, ``export`` of such a run, the Ray backend, and the rule that a method reads the victim's
training settings only when it declares so.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
from tiny_cli import TINY_CLI, one_line_error

from uebench import plugin_loader
from uebench.cli import main
from uebench.errors import UebenchError
from uebench.grid import GridConfig, ResultStore
from uebench.identity import poison_key
from uebench.method import CraftContext
from uebench.registry import REGISTRIES
from uebench.training import TrainConfig
from uebench.version import plugin_provenance

PLUGIN_SOURCE = '''
"""Plugins of the tests of uebench's --plugin (never installed)."""

import torch

from uebench import Poison
from uebench.countermeasure import Countermeasure
from uebench.method import Method, check_eps


class MyNoise(Method):
    """Class-wise uniform noise."""

    def __init__(self, *, eps: float = 8 / 255, seed: int = 0) -> None:
        self.eps, self.seed = check_eps(eps), seed

    def craft(self, data, ctx):
        generator = torch.Generator().manual_seed(self.seed)
        delta = torch.rand(data.num_classes, *data.image_shape, generator=generator) * 2 - 1
        return Poison(delta * self.eps, data.y_train, self.eps, meta={"form": "class"})


class ReadsTraining(MyNoise):
    """Noise that depends on the victim's epochs without declaring it."""

    def craft(self, data, ctx):
        self.seed += ctx.train_config.epochs
        return super().craft(data, ctx)


class DeclaresTraining(ReadsTraining):
    """The same, declared."""

    uses_victim_training = True


class KeepAll(Countermeasure):
    """Standard training."""


def not_a_plugin():
    return 1
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh plugin module's name (unique, so no test sees another's import), importable
    from a folder on ``sys.path`` only; every registry is restored afterwards."""
    name = f"uninstalled_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(plugin_loader.ENVIRONMENT, raising=False)
    for registry in REGISTRIES.values():
        monkeypatch.setattr(registry, "_extra", dict(registry._extra))
        monkeypatch.setattr(registry, "_overrides", dict(registry._overrides))
    monkeypatch.setattr(plugin_loader, "LOADED", dict(plugin_loader.LOADED))
    return name


def forget(name: str) -> None:
    """Unregister ``name`` everywhere, as a new process would start."""
    for registry in REGISTRIES.values():
        registry._extra.pop(name, None)


def run_argv(out: Path, *flags: str) -> list[str]:
    return ["run", *TINY_CLI, "--out", str(out), "--no-progress", *flags]


def test_a_plugin_on_the_path_runs_and_its_run_exports(plugin, tmp_path, capsys):
    out = tmp_path / "run"
    argv = run_argv(out, "--plugin", f"my-noise={plugin}:MyNoise", "--methods", "my-noise")
    assert main(argv) == 0, capsys.readouterr().err
    (record,) = ResultStore(out).records()
    (entry,) = [p for p in record["plugins"] if p["name"] == "my-noise"]
    assert entry["kind"] == "methods" and entry["origin"] == "path"
    assert entry["factory"] == f"{plugin}:MyNoise" and len(entry["source_sha256"]) == 64
    assert record["config"]["identity"]["method"]["code"]["source_sha256"] == entry["source_sha256"]

    # A new process knows nothing of it: export names the flag that would rebuild the cell.
    forget("my-noise")
    record_path = out / "cells" / f"{record['cell_id']}.json"
    target = tmp_path / "poisoned.npz"
    message = one_line_error(capsys, main(["export", str(record_path), str(target)]))
    assert f"--plugin my-noise={plugin}:MyNoise" in message and not target.exists()
    export = ["export", str(record_path), str(target), "--format", "npz"]
    assert main([*export, "--plugin", f"my-noise={plugin}:MyNoise"]) == 0
    assert target.exists()


def test_the_environment_variable_registers_by_base_class(plugin, monkeypatch, capsys):
    value = f"my-noise={plugin}:MyNoise, keep-all={plugin}:KeepAll,"
    monkeypatch.setenv(plugin_loader.ENVIRONMENT, value)
    assert main(["list"]) == 0
    shown = capsys.readouterr().out
    methods, defenses = shown.index("methods:"), shown.index("defenses:")
    assert defenses < shown.index("keep-all ") < methods < shown.index("my-noise ")
    assert "Class-wise uniform noise." in shown


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("my-noise", ("expected NAME=module:Class",)),
        ("=MODULE:MyNoise", ("expected NAME=module:Class",)),
        ("my-noise=MODULE", ("expected NAME=module:Class",)),
        ("my:noise=MODULE:MyNoise", ("cannot be a plugin name",)),
        ("my-noise=no_such_module_zz:MyNoise", ("cannot import module", "PYTHONPATH")),
        ("my-noise=MODULE:Missing", ("has no 'Missing'", "it defines", "MyNoise")),
        ("my-noise=MODULE:not_a_plugin", ("not a subclass of uebench's Method",)),
        ("my-noise=uebench.method:Method", ("not a subclass",)),
        ("emin=MODULE:MyNoise", ("'emin' is registered already", "--plugin-override")),
    ],
)
def test_bad_values_are_one_line_before_any_work(
    plugin, tmp_path, capsys, no_work, value: str, words: tuple[str, ...]
):
    argv = run_argv(tmp_path / "o", "--plugin", value.replace("MODULE", plugin))
    message = one_line_error(capsys, main(argv))
    assert all(word in message for word in words), message
    assert not (tmp_path / "o").exists()


def test_a_module_that_fails_to_import_is_one_line(plugin, tmp_path, capsys, no_work):
    broken = tmp_path / "plugins" / f"{plugin}_broken.py"
    broken.write_text("raise RuntimeError('half-written plugin')\n")
    argv = run_argv(tmp_path / "o", "--plugin", f"x={plugin}_broken:X")
    message = one_line_error(capsys, main(argv))
    assert "importing module" in message and "RuntimeError: half-written plugin" in message


def test_one_name_for_two_classes_is_refused(plugin, tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setenv(plugin_loader.ENVIRONMENT, f"my-noise={plugin}:MyNoise")
    argv = run_argv(tmp_path / "o", "--plugin", f"my-noise={plugin}:DeclaresTraining")
    message = one_line_error(capsys, main(argv))
    assert "given twice" in message and "UEBENCH_PLUGINS" in message


def test_an_override_is_explicit_and_named_in_the_record(plugin, tmp_path, capsys, tiny_grid):
    out = tmp_path / "run"
    flags = ("--plugin", f"random={plugin}:MyNoise", "--plugin-override", "--methods", "random")
    assert main(run_argv(out, *flags)) == 0, capsys.readouterr().err
    (record,) = ResultStore(out).records()
    (entry,) = [p for p in record["plugins"] if p["name"] == "random"]
    replaced = "uebench.methods.random_noise:RandomNoise"
    assert entry["overrides"] == replaced and entry["factory"] == f"{plugin}:MyNoise"
    assert record["config"]["identity"]["method"]["overrides"] == replaced
    # The built-in's cell is another cell: an override never takes its place in a run folder.
    forget("random")
    builtin = GridConfig(**tiny_grid, methods=["random"], out=str(out)).cells()[0]
    assert builtin.cell_id != record["cell_id"]


def test_unknown_names_say_how_plugins_are_found(tmp_path, capsys, no_work):
    message = one_line_error(capsys, main(run_argv(tmp_path / "o", "--methods", "my-noise")))
    assert "unknown method 'my-noise'" in message
    assert "entry points" in message and "--plugin my-noise=module:Class" in message
    assert "UEBENCH_PLUGINS" in message


def test_an_edited_plugin_is_a_new_cell_and_a_new_poison(plugin, tmp_path, tiny_grid):
    plugin_loader.use_plugins([f"my-noise={plugin}:MyNoise"])
    config = GridConfig(**tiny_grid, methods=["my-noise"], out=str(tmp_path / "o"))
    before = config.cells()[0]
    key = poison_key("my-noise", "data", None)
    source = tmp_path / "plugins" / f"{plugin}.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    plugin_provenance.cache_clear()  # a new process computes it afresh
    after = GridConfig(**tiny_grid, methods=["my-noise"], out=str(tmp_path / "o")).cells()[0]
    assert after.cell_id != before.cell_id
    assert poison_key("my-noise", "data", None) != key


def test_reading_undeclared_training_settings_is_refused(plugin, tmp_path):
    from uebench.api import craft, load

    plugin_loader.use_plugins(
        [f"reads={plugin}:ReadsTraining", f"declares={plugin}:DeclaresTraining"]
    )
    data = load("digits:size=8", train_size=60, test_size=30)
    with pytest.raises(UebenchError) as caught:
        craft("reads", data, device="cpu", progress=False)
    message = str(caught.value)
    assert "'reads'" in message and "uses_victim_training = True" in message
    assert "\n" not in message
    # Declared, it crafts, and its poison is keyed by the training settings.
    short, long = TrainConfig(epochs=1), TrainConfig(epochs=2)
    a = craft("declares", data, device="cpu", progress=False, train=short)
    b = craft("declares", data, device="cpu", progress=False, train=long)
    assert not torch.equal(a.delta, b.delta)
    fingerprint = data.fingerprint()
    assert poison_key("declares", fingerprint, short.as_dict()) != poison_key(
        "declares", fingerprint, long.as_dict()
    )
    # A method built on one that declares it (mix's part) is keyed by the settings too.
    mixed = "mix:first=[declares]:second=[random]"
    assert poison_key(mixed, fingerprint, short.as_dict()) != poison_key(
        mixed, fingerprint, long.as_dict()
    )
    # Nested in a declared method's crafting, the undeclared one is still refused.
    ctx = CraftContext(torch.device("cpu"), short, progress=False)
    with pytest.raises(UebenchError, match="'reads' reads the victim's training settings"):
        ctx.craft("mix:first=[reads]:second=[random]", data)


def test_a_grid_refuses_it_in_one_line(plugin, tmp_path, capsys):
    argv = run_argv(tmp_path / "o", "--plugin", f"reads={plugin}:ReadsTraining")
    message = one_line_error(capsys, main([*argv, "--methods", "reads"]))
    assert "method 'reads' reads the victim's training settings" in message


def test_the_ray_backend_ships_a_plugin_its_workers_cannot_import(plugin, tmp_path, capsys):
    ray = pytest.importorskip("ray", reason='Ray is not installed (pip install -e ".[ray]")')
    # The workers' path does not hold the plugin's folder: its code travels by value.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "ray"
        flags = ("--plugin", f"my-noise={plugin}:MyNoise", "--methods", "my-noise")
        assert main(run_argv(out, *flags, "--backend", "ray", "--threads", "1")) == 0, (
            capsys.readouterr().err
        )
    finally:
        ray.shutdown()
    (remote,) = ResultStore(out).records()
    assert remote["method"] == "my-noise" and remote["backend"] == "ray"
    local = tmp_path / "local"
    assert main(run_argv(local, "--methods", "my-noise")) == 0
    (again,) = ResultStore(local).records()
    assert again["cell_id"] == remote["cell_id"]
    assert again["poison_hash"] == remote["poison_hash"]
