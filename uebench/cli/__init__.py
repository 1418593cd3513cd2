"""``uebench`` command line: ``run`` a grid, ``list`` the registered plugins, and the commands
of :data:`COMMAND_MODULES`.

A command module has one function, ``register(commands)``, that adds its subparser to
``commands`` (an argparse sub-parsers object) and sets ``handler=<function(args)>`` on it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import tomllib

from uebench.errors import UebenchError
from uebench.grid.protocols import protocol_names
from uebench.registry import REGISTRIES

_RUN_FLAGS = {
    "dataset": "dataset spec (default: cluttered-digits, embedded, offline)",
    "data_root": "folder holding the dataset files",
    "methods": "comma-separated method specs, e.g. clean,emin,emin:form=class",
    "defenses": "comma-separated countermeasure specs, e.g. none,cutmix+earlystop",
    "archs": "comma-separated architecture specs, e.g. resnet18:width=16",
    "seeds": "victim training seeds, e.g. 0,1,2 or 0-4",
    "epochs": "training epochs (default: the paper's for the dataset)",
    "batch_size": "training batch size (default 128)",
    "lr": "initial learning rate (default 0.025, the paper's; its code uses 0.1)",
    "train_size": "stratified subset of the training set",
    "test_size": "stratified subset of the test set",
    "device": "auto, cpu or cuda[:N] (default auto)",
    "out": "results folder (default runs/default)",
    "cache_dir": "poison cache folder (default: cache/ beside the results folder)",
    "protocol": "named settings bundle (uebench list protocols; default: the dataset's)",
    "threads": "torch threads per cell (default: see README, Threads)",
    "backend": "local (default) or ray",
    "address": "Ray cluster address: auto or ray://HOST:PORT (default: start a local Ray)",
    "cpus_per_cell": "Ray: CPUs each cell requests",
    "gpus_per_cell": "Ray: GPUs each cell requests (default 1 when the cluster has GPUs)",
    "max_cells": "refuse a grid of more cells than this (default 10000)",
}
_INT_FLAGS = {"epochs", "batch_size", "train_size", "test_size", "threads", "max_cells"}
_FLOAT_FLAGS = {"lr", "cpus_per_cell", "gpus_per_cell"}

#: Modules that add further subcommands (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "uebench.cli.diagnose",
    "uebench.cli.certify",
    "uebench.cli.board",
    "uebench.cli.export",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="uebench", description="Benchmark unlearnable-example methods against countermeasures."
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an error, show the traceback too (also: environment UEBENCH_DEBUG=1)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a method × countermeasure × arch × seed grid")
    run.add_argument("--config", help="TOML or YAML file with the same keys; flags override it")
    for name, text in _RUN_FLAGS.items():
        kind = int if name in _INT_FLAGS else float if name in _FLOAT_FLAGS else str
        run.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, help=text)
    run.add_argument(
        "--save-models", action="store_true", default=None, help="keep each trained victim model"
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(handler=_run)
    listing = commands.add_parser("list", help="list registered plugins and their options")
    listing.add_argument(
        "kind", nargs="?", choices=[*sorted(REGISTRIES), "protocols"], help="which registry"
    )
    listing.set_defaults(handler=lambda args: _list(args.kind))
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """A grid config from TOML (``.toml``) or YAML (``.yaml``/``.yml``)."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise UebenchError(f"cannot read config {path}: {error.strerror}") from None
    try:
        if file.suffix == ".toml":
            values = tomllib.loads(text)
        elif file.suffix in {".yaml", ".yml"}:
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            raise UebenchError(f"config {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as error:
        raise UebenchError(f"config {path} is not valid: {str(error).splitlines()[0]}") from None
    except Exception as error:  # yaml's errors are many classes; all mean a malformed file
        if isinstance(error, UebenchError):
            raise
        raise UebenchError(f"config {path} is not valid: {str(error).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UebenchError(f"config {path} must be a mapping of keys to values")
    return values.get("run", values) if isinstance(values.get("run"), dict) else values


def _run(args: argparse.Namespace) -> None:
    from uebench.grid import GridConfig, run_grid, summary

    values = read_config_file(args.config) if args.config else {}
    if values:
        # A flag overriding a key does not make the file's own value right: check it alone too.
        try:
            GridConfig.from_dict(values)
        except UebenchError as error:
            raise UebenchError(f"{args.config}: {error}") from None
    flags = {*_RUN_FLAGS, "save_models"}
    values.update({k: v for k, v in vars(args).items() if k in flags and v is not None})
    if args.no_progress:
        values["progress"] = False
    config = GridConfig.from_dict(values)
    started = time.perf_counter()
    table = run_grid(config)
    protocol = config.resolved_protocol()
    out = Path(config.out)
    print(f"\nprotocol {protocol.name} on {protocol.dataset} (uebench list protocols shows it)")
    print(summary(table))
    print(
        f"wall time {time.perf_counter() - started:.0f} s; records in {out / 'cells'}, "
        f"table in {out / 'results.csv'}; report: uebench report {out}"
    )


def _list(kind: str | None) -> None:
    if kind == "protocols":
        _list_protocols()
        return
    for name in [kind] if kind else sorted(REGISTRIES):
        registry = REGISTRIES[name]
        print(f"{name}:")
        for plugin in registry.names():
            factory = registry.get(plugin)
            doc = (inspect.getdoc(factory) or "").splitlines()
            options = ", ".join(
                f"{p.name} (required)" if p.default is p.empty else f"{p.name}={_show(p.default)}"
                for p in registry.options(plugin).values()
            )
            print(f"  {plugin:16s} {doc[0] if doc else ''}")
            if name == "methods":
                print(f"  {'':16s} threat model: {_threat_of(registry, plugin)}")
            if options:
                print(f"  {'':16s} options: {options}")


def _threat_of(registry: Any, plugin: str) -> str:
    """A method's threat model at its default options (``L∞ ≤ 8/255``, ``L2 ≤ 1``, ...)."""
    try:
        threat = registry.build(plugin).threat_model()
    except UebenchError:  # needs an option to be built, or its parts' budgets decide
        return "depends on its options"
    return threat.describe() if threat is not None else "undeclared"


def _list_protocols() -> None:
    """Every protocol with every value it sets, for each dataset it declares."""
    from uebench.grid.protocols import declared_datasets, default_protocols, resolve_protocol

    for name in protocol_names():
        print(f"{name}:")
        first = resolve_protocol(name, "*")
        print(textwrap.fill(first.description, 96, initial_indent="  ", subsequent_indent="  "))
        defaults = [d for d, p in default_protocols().items() if p == name]
        if defaults:
            print(f"  the default protocol of: {', '.join(defaults)}")
        for dataset in declared_datasets(name):
            protocol = resolve_protocol(name, dataset)
            if dataset == "*":
                print("  any dataset not listed below:")
            else:
                print(f"  {dataset}:")
            for key, value in protocol.as_dict().items():
                if key not in ("name", "dataset") and value not in (None, {}):
                    print(f"    {key:15s} {_show_value(value)}")


def _show_value(value: Any) -> str:
    """Protocol values in the spec grammar: ``emin:steps=5``, ``source=[resnet18:width=16]``."""
    from uebench.grid.protocols import spec_value

    if isinstance(value, dict):
        nested = any(isinstance(v, dict) for v in value.values())
        if nested:  # per-plugin options: one spec per plugin
            return " ".join(
                name + "".join(f":{k}={spec_value(v)}" for k, v in options.items())
                for name, options in value.items()
            )
        return ":".join(f"{k}={spec_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(map(str, value))
    return _show(value)


def _show(value: Any) -> str:
    """A default as a user would type it: 8/255 rather than 0.03137254901960784."""
    as_fraction = isinstance(value, float) and abs(value * 255 - round(value * 255)) < 1e-9
    if as_fraction and round(value, 6) != value and value < 1:
        return f"{round(value * 255)}/255"
    return f"{value:g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``uebench`` command; user errors print one line and exit 2."""
    args = _parser().parse_args(argv)
    try:
        args.handler(args)
    except UebenchError as error:
        if args.debug or os.environ.get("UEBENCH_DEBUG", "").lower() in {"1", "true", "yes"}:
            traceback.print_exception(error)  # with its cause: a plugin's own exception
        print(f"uebench: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `uebench list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
    except KeyboardInterrupt:
        print(
            "uebench: interrupted; finished cells are saved, rerun the command to resume",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
