"""``uebench`` command line: ``run`` a grid, ``list`` the registered plugins, and the commands
of :data:`COMMAND_MODULES`.

A command module has one function, ``register(commands)``, that adds its subparser to
``commands`` (an argparse sub-parsers object) and sets ``handler=<function(args)>`` on it.  A
command that builds plugins adds ``--plugin`` with :func:`uebench.cli.plugins.add_plugin_flag`;
:func:`main` registers them before the handler runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import signal
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from uebench.cli.plugins import add_plugin_flag, register_plugins
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid, summary
from uebench.grid.config import add_run_flags, run_values
from uebench.grid.protocols import (
    declared_datasets,
    default_protocols,
    protocol_names,
    resolve_protocol,
    spec_value,
)
from uebench.registry import REGISTRIES
from uebench.scoring.suites import describe_suites

#: Modules that add further subcommands (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "uebench.cli.diagnose",
    "uebench.cli.certify",
    "uebench.cli.board",
    "uebench.cli.export",
    "uebench.cli.bench",
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
    add_run_flags(run)
    add_plugin_flag(run)
    run.set_defaults(handler=_run)
    listing = commands.add_parser("list", help="list registered plugins and their options")
    listing.add_argument(
        "kind",
        nargs="?",
        choices=[*sorted(REGISTRIES), "protocols", "suites"],
        help="which registry",
    )
    add_plugin_flag(listing)
    listing.set_defaults(handler=lambda args: _list(args.kind))
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def _run(args: argparse.Namespace) -> None:
    config = GridConfig.from_dict(run_values(args))
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
    if kind == "suites":
        print(describe_suites())
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's stop), raised where SIGINT's KeyboardInterrupt would
    be: the same cleanup (claims released, Ray tasks cancelled) and the same line."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``uebench`` command; user errors print one line and exit 2, an
    interrupt (Ctrl-C, SIGTERM) one line and 130 (143 for SIGTERM)."""
    args = _parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return _handle(args)
    finally:
        if previous is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def _handle(args: argparse.Namespace) -> int:
    try:
        register_plugins(args)  # a command with --plugin: its plugins, before any work
        args.handler(args)
    except UebenchError as error:
        if args.debug or os.environ.get("UEBENCH_DEBUG", "").lower() in {"1", "true", "yes"}:
            traceback.print_exception(error)  # with its cause: a plugin's own exception
        print(f"uebench: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `uebench list | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
    except KeyboardInterrupt as interrupt:
        terminated = isinstance(interrupt, Terminated)
        print(
            f"uebench: {'terminated' if terminated else 'interrupted'}; finished cells are "
            "saved, rerun the command to resume",
            file=sys.stderr,
        )
        return 143 if terminated else 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
