"""``--plugin NAME=module:Class`` and ``--plugin-override`` for every command that builds plugins.

A command adds the flags with :func:`add_plugin_flag`; :func:`uebench.cli.main` then calls
:func:`register_plugins` before the command's handler runs, so the plugins named by the flags
and by the environment variable ``UEBENCH_PLUGINS`` are registered (or a bad value is one
line) before any work.  :func:`require_record_plugins` is for commands that rebuild a recorded
cell (``export``, ``certify``): it names what to pass when a plugin the cell used is missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from uebench.errors import UebenchError
from uebench.plugin_loader import ENVIRONMENT, FORM, environment_plugins, parse_plugin, use_plugins
from uebench.registry import REGISTRIES


def add_plugin_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--plugin`` (repeatable) and ``--plugin-override`` to a command's parser."""
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        metavar=FORM,
        help="register a method, countermeasure or architecture class from any importable "
        f"module (current folder, PYTHONPATH) without installing it; repeatable; also: "
        f"environment {ENVIRONMENT}=NAME=module:Class,...",
    )
    parser.add_argument(
        "--plugin-override",
        action="store_true",
        help="let --plugin replace a registered plugin of the same name (records name the "
        "replacement); without it that is an error",
    )


def register_plugins(args: argparse.Namespace) -> list[str]:
    """Register the plugins ``UEBENCH_PLUGINS`` and ``--plugin`` name (a command without the
    flags registers none); return ``kind name`` of each."""
    if not hasattr(args, "plugins"):
        return []
    refs = [*environment_plugins(), *(parse_plugin(text) for text in args.plugins or [])]
    return use_plugins(refs, override=args.plugin_override)


def require_record_plugins(record: dict[str, Any]) -> None:
    """Refuse, in one line, a cell record whose method, countermeasure or architecture is not
    registered here, naming the ``--plugin`` that would register it (from the record, as a
    hint only: code named in a record is never imported automatically)."""
    for plugin in record.get("plugins") or []:
        kind, name = plugin.get("kind"), plugin.get("name")
        registry = REGISTRIES.get(kind) if isinstance(kind, str) else None
        if registry is None or not isinstance(name, str) or name in registry.names():
            continue
        factory = plugin.get("factory")
        hint = (
            f"pass --plugin {name}={factory} if that is the code it ran"
            if isinstance(factory, str)
            else f"install the package that provides it or pass --plugin {name}=module:Class"
        )
        raise UebenchError(
            f"cell {record.get('cell_id')} used {registry.kind} {name!r}, which is not "
            f"registered here; {hint} (a record's code is never imported automatically)"
        )
