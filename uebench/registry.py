"""Plugin registries, filled from Python entry points.

A plugin is a callable (class or function).  Its keyword-only parameters are the options a user
may set in a spec (``resnet18:width=16``); its positional parameters are supplied by the harness
at run time (e.g. ``num_classes``).  Built-ins and third-party packages register the same way:

    [project.entry-points."uebench.methods"]
    mymethod = "my_package.module:MyMethod"
"""

from __future__ import annotations

import functools
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from uebench.errors import UebenchError
from uebench.options import convert, guess
from uebench.spec import Spec, parse_spec


@dataclass(frozen=True)
class Resolved:
    """A spec checked against its plugin: the factory and every option, defaults included."""

    spec: Spec
    factory: Callable[..., Any]
    options: dict[str, Any]
    common: frozenset[str] = frozenset()  # options the harness handles, not the factory

    def canonical(self) -> dict[str, Any]:
        """What determines the plugin's behaviour, for hashing (spelling-independent)."""
        return {"name": self.spec.name, "options": _jsonable(self.options)}

    def build(self, *runtime: Any) -> Any:
        own = {k: v for k, v in self.options.items() if k not in self.common}
        return self.factory(*runtime, **own)

    def without_common(self) -> Resolved:
        """The same plugin with the harness-handled options dropped (e.g. for a cache key)."""
        own = {k: v for k, v in self.options.items() if k not in self.common}
        return Resolved(self.spec, self.factory, own)


def factory_path(factory: Callable[..., Any]) -> str:
    """``module:qualified.name`` of a plugin's factory, as a record or a message names it."""
    target = factory
    while isinstance(target, functools.partial):
        target = target.func
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', type(target).__name__)}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _takes_any_option(factory: Callable[..., Any]) -> bool:
    """Whether the plugin accepts options it does not name (a ``**options`` parameter)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_KEYWORD for p in parameters)


@functools.lru_cache(maxsize=64)
def _scan_entry_points(group: str, search_path: tuple[str, ...]) -> dict[str, Any]:
    """The entry points of ``group`` installed on ``search_path``.

    Cached because one scan reads every installed distribution's metadata (about 16 ms here)
    and planning a grid looks plugins up hundreds of times (4.6 s for 60 cells uncached); the
    search path is part of the key, so a folder put on ``sys.path`` later is still seen.
    """
    del search_path  # only a cache key: entry_points() reads sys.path itself
    return {ep.name: ep for ep in entry_points(group=group)}


class Registry:
    """Named plugins of one kind, loaded lazily from the entry-point group ``group``."""

    def __init__(
        self,
        group: str,
        kind: str,
        common: dict[str, tuple[Any, Any]] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self._extra: dict[str, Callable[..., Any]] = {}
        # Names whose registration replaced another plugin on purpose: name -> what it replaced
        # (``module:attribute``), for identities and records (a shadow is never silent).
        self._overrides: dict[str, str] = {}
        # Options every plugin of this kind accepts, handled by the harness: name → (type, default)
        self.common = common or {}

    def _entry_points(self) -> dict[str, Any]:
        return _scan_entry_points(self.group, tuple(sys.path))

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(set(self._entry_points()) | set(self._extra))

    def register(self, name: str, factory: Callable[..., Any], *, override: bool = False) -> None:
        """Register a plugin at run time (``--plugin``, notebooks, tests); entry points are the
        usual way.

        A name that is registered already (an installed plugin, or another factory registered
        at run time) is a one-line error unless ``override`` is given; an override is then
        remembered (:meth:`overridden`), joins the plugin's identity and is named in records.
        Registering the same factory again changes nothing.
        """
        current = self._extra.get(name)
        if current is factory:
            return
        entry = self._entry_points().get(name)
        replaced = factory_path(current) if current is not None else entry.value if entry else None
        if replaced is not None:
            if not override:
                raise UebenchError(
                    f"{self.kind} {name!r} is registered already ({replaced}); pick another "
                    "name, or replace it explicitly (--plugin-override; in Python override=True)"
                )
            self._overrides.setdefault(name, replaced)
        else:
            self._overrides.pop(name, None)  # a stale note of an earlier, removed override
        self._extra[name] = factory

    def overridden(self, name: str) -> str | None:
        """What a run-time registration of ``name`` replaced (``module:attribute``), or None."""
        return self._overrides.get(name) if name in self._extra else None

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as ``name``; unknown names list the valid ones."""
        if name in self._extra:
            return self._extra[name]
        found = self._entry_points().get(name)
        if found is None:
            raise UebenchError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(self.names()) or '(none)'} "
                f"(plugins come from installed packages' {self.group!r} entry points, "
                f"--plugin {name}=module:Class, or UEBENCH_PLUGINS; docs/plugins.md)"
            )
        try:
            return found.load()
        except Exception as error:  # a broken third-party plugin must not take the CLI down
            raise UebenchError(f"{self.kind} {name!r} failed to load: {error}") from error

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """User-settable options of ``name``: its keyword-only parameters and the common ones."""
        signature = inspect.signature(self.get(name))
        own = {p.name: p for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY}
        for key, (annotation, default) in self.common.items():
            own.setdefault(
                key,
                inspect.Parameter(
                    key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
                ),
            )
        return own

    def resolve(self, spec: Spec | str) -> Resolved:
        """Check a spec's options against the plugin and convert them to typed values."""
        spec = parse_spec(spec) if isinstance(spec, str) else spec
        factory = self.get(spec.name)
        params = self.options(spec.name)
        try:
            hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
        except Exception:
            hints = {}
        own = set(hints) | {k for k in params if k not in self.common}
        common = frozenset(k for k in self.common if k not in own)
        hints = {**{k: self.common[k][0] for k in common}, **hints}
        given = dict(spec.options)
        if spec.positional is not None:
            if not params:
                raise UebenchError(f"{self.kind} {spec.name!r} takes no options")
            first = next(iter(params))
            if first in given:
                raise UebenchError(f"bad spec {spec.text!r}: {first!r} given twice")
            given = {first: spec.positional, **given}
        unknown = sorted(set(given) - set(params))
        passthrough = {}
        if unknown and _takes_any_option(factory):
            # A plugin with ``**options`` (``timm:NAME``) hands options it does not name on to
            # the library it wraps, typed by their spelling.
            passthrough = {key: guess(given.pop(key)) for key in unknown}
            unknown = []
        if unknown:
            valid = ", ".join(params) or "(none)"
            raise UebenchError(
                f"{self.kind} {spec.name!r} has no option {unknown[0]!r}; valid: {valid}"
            )
        options: dict[str, Any] = {}
        for key, param in params.items():
            if key in given:
                where = f"{spec.text}: {key}"
                options[key] = convert(given[key], hints.get(key, str), where, text=True)
            elif param.default is inspect.Parameter.empty:
                raise UebenchError(f"{self.kind} {spec.name!r} needs option {key!r}")
            elif key not in common:  # unset common options stay out, so old hashes hold
                options[key] = param.default
        options.update(passthrough)
        return Resolved(spec=spec, factory=factory, options=options, common=common)

    def build(self, spec: Spec | str, *runtime: Any) -> Any:
        """Resolve ``spec`` and call its factory with the run-time arguments."""
        return self.resolve(spec).build(*runtime)


# ``classes`` poisons only the named classes (numbers or names), for any method: the harness
# crafts the method's noise once and leaves the other classes' images clean.
METHODS = Registry("uebench.methods", "method", common={"classes": (tuple[str, ...] | None, None)})
COUNTERMEASURES = Registry("uebench.defenses", "countermeasure")
#: The countermeasure registry under its entry-point group's name, as plugin authors know it.
DEFENSES = COUNTERMEASURES
ARCHS = Registry("uebench.archs", "architecture")
DATASETS = Registry("uebench.datasets", "dataset")

#: Every registry by the kind records and ``uebench list`` name it (``defenses``: the CLI's word).
REGISTRIES = {
    "methods": METHODS,
    "defenses": COUNTERMEASURES,
    "archs": ARCHS,
    "datasets": DATASETS,
}
