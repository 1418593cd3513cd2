"""Plugins named as ``NAME=module:Class``, imported and registered without installing a package.

The command line takes them from ``--plugin`` (repeatable) and the environment variable
``UEBENCH_PLUGINS`` (``NAME=module:Class,NAME=module:Class``); Python code calls
:func:`use_plugins`.  The module is imported as Python imports any module (``PYTHONPATH``, the
current folder, installed packages), and the class's base class says which registry it joins:
a :class:`~uebench.method.Method` is a method, a
:class:`~uebench.countermeasure.Countermeasure` a countermeasure and a ``torch.nn.Module`` an
architecture.  Its identity (cell ids, poison keys, a record's ``plugins``) is an outside
plugin's: its source hash (:mod:`uebench.version`), so an edited plugin gets new cells.

A name registered already (installed, or given twice) is a one-line error unless the caller
asks to override it; every mistake in a value is one line, raised before anything registers.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from uebench.countermeasure import Countermeasure
from uebench.errors import UebenchError, named_error
from uebench.method import Method
from uebench.registry import REGISTRIES
from uebench.spec import parse_spec

#: The environment variable that names plugins for every command that takes ``--plugin``.
ENVIRONMENT = "UEBENCH_PLUGINS"

#: Base class -> the registry (``uebench list`` kind) its subclasses join, checked in order.
KINDS: tuple[tuple[type, str], ...] = (
    (Method, "methods"),
    (Countermeasure, "defenses"),
    (nn.Module, "archs"),
)

#: A plugin's value as users write it, for messages.
FORM = "NAME=module:Class"


@dataclass(frozen=True)
class PluginRef:
    """One ``NAME=module:Class`` value and where it was given (``--plugin``, the variable)."""

    name: str
    module: str
    attribute: str
    given_in: str

    @property
    def target(self) -> str:
        return f"{self.module}:{self.attribute}"

    def where(self) -> str:
        return f"{self.given_in} {self.name}={self.target}"


#: Every plugin registered through :func:`use_plugins` in this process: (kind, name) -> ref.
LOADED: dict[tuple[str, str], PluginRef] = {}


def parse_plugin(text: str, given_in: str = "--plugin") -> PluginRef:
    """``NAME=module:Class`` into its parts; anything else is a one-line error."""
    name, equals, target = (part.strip() for part in text.partition("="))
    module, colon, attribute = (part.strip() for part in target.partition(":"))
    if not equals or not colon or not name or not module or not attribute:
        raise UebenchError(f"{given_in} {text!r}: expected {FORM}, e.g. my-noise=my_noise:MyNoise")
    try:
        spec = parse_spec(name)
        plain = spec.name == name and not spec.options and spec.positional is None
    except UebenchError:
        plain = False
    if not plain:
        raise UebenchError(
            f"{given_in} {text!r}: {name!r} cannot be a plugin name (no ':', '=', ',', '+' "
            "or brackets)"
        )
    if not all(part.isidentifier() for part in module.split(".")):
        raise UebenchError(f"{given_in} {text!r}: {module!r} is not a module name")
    return PluginRef(name, module, attribute, given_in)


def environment_plugins(environ: dict[str, str] | None = None) -> list[PluginRef]:
    """The plugins ``UEBENCH_PLUGINS`` names (comma-separated; empty entries ignored)."""
    value = (os.environ if environ is None else environ).get(ENVIRONMENT, "")
    return [parse_plugin(part, ENVIRONMENT) for part in value.split(",") if part.strip()]


def load_plugin(ref: PluginRef) -> tuple[str, Callable[..., Any]]:
    """Import ``ref``'s class; return the registry kind its base class gives and the class."""
    module = _import(ref)
    found = module
    for part in ref.attribute.split("."):
        found = getattr(found, part, None)
        if found is None:
            candidates = _plugin_classes(module)
            hint = f"; it defines {', '.join(candidates)}" if candidates else ""
            raise UebenchError(
                f"{ref.where()}: module {ref.module!r} has no {ref.attribute!r}{hint}"
            )
    kind = _kind_of(found)
    if kind is None:
        raise UebenchError(
            f"{ref.where()}: {ref.attribute!r} is not a subclass of uebench's Method, "
            "Countermeasure or torch.nn.Module (an architecture)"
        )
    return kind, found


def use_plugins(refs: Iterable[PluginRef | str], *, override: bool = False) -> list[str]:
    """Import and register each plugin; return ``kind name`` of each, for messages.

    Every value is checked and imported first, so a bad one registers nothing.  A name given
    twice for different classes, or one registered already, is a one-line error unless
    ``override``; then the replacement is remembered and named in records.
    """
    parsed = [parse_plugin(ref) if isinstance(ref, str) else ref for ref in refs]
    loaded: dict[str, tuple[PluginRef, str, Callable[..., Any]]] = {}
    for ref in parsed:
        kind, factory = load_plugin(ref)
        earlier = loaded.get(ref.name)
        if earlier is not None and earlier[2] is not factory and not override:
            raise UebenchError(
                f"{ref.where()}: the name {ref.name!r} is given twice ({earlier[0].where()})"
            )
        loaded[ref.name] = (ref, kind, factory)
    for ref, kind, factory in loaded.values():
        registry = REGISTRIES[kind]
        try:
            registry.register(ref.name, factory, override=override)
        except UebenchError as error:
            raise UebenchError(f"{ref.where()}: {error}") from None
        LOADED[(kind, ref.name)] = ref
    return [f"{kind} {ref.name}" for ref, kind, _ in loaded.values()]


def plugin_modules() -> list[str]:
    """The top-level modules of every plugin :func:`use_plugins` registered (for shipping
    their code to Ray workers by value)."""
    return sorted({ref.module.split(".")[0] for ref in LOADED.values()})


def _import(ref: PluginRef) -> Any:
    """The plugin's module; the current folder is searched last, as ``python -m`` would
    search it first (the ``uebench`` command's own folder is not the user's)."""
    top = ref.module.split(".")[0]
    here = os.getcwd()
    try:
        findable = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        findable = True  # let the import below say what is wrong
    if here not in sys.path and not findable:
        sys.path.append(here)
    try:
        return importlib.import_module(ref.module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if ref.module == missing or ref.module.startswith(missing + "."):
            raise UebenchError(
                f"{ref.where()}: cannot import module {ref.module!r} (not in the current "
                "folder nor on PYTHONPATH)"
            ) from None
        raise UebenchError(
            f"{ref.where()}: importing module {ref.module!r} failed: {named_error(error)}"
        ) from error
    except Exception as error:  # the module's own code raised: one line naming it
        raise UebenchError(
            f"{ref.where()}: importing module {ref.module!r} failed: {named_error(error)}"
        ) from error


def _kind_of(found: Any) -> str | None:
    if not inspect.isclass(found) or found in {base for base, _ in KINDS}:
        return None
    for base, kind in KINDS:
        if issubclass(found, base):
            return kind
    return None


def _plugin_classes(module: Any) -> list[str]:
    """The plugin classes a module defines itself, for a hint when the named one is missing."""
    return sorted(
        name
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and value.__module__ == module.__name__
        and _kind_of(value) is not None
    )
