"""The flags a plugin class declares to the harness besides its options, with their defaults.

They decide what joins a plugin's identity (:mod:`uebench.identity`: cell ids and poison keys)
and what the harness lends a method.  :class:`~uebench.method.Method` inherits
:class:`MethodFlags` and :class:`~uebench.countermeasure.Countermeasure` inherits
:class:`PluginFlags`, so a plugin overrides a flag by setting a class attribute of that name.
They live here, below both base classes, because :mod:`uebench.identity` reads them and
:mod:`uebench.method` takes its poison keys from :mod:`uebench.identity`.

A factory need not derive from a base class (an architecture or dataset function, a
third-party class): :func:`plugin_flag` reads a flag from any of them and falls back to the
default declared here.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PluginFlags:
    """Flags every kind of plugin may declare."""

    #: Options added after results were recorded (name -> default): at their default they stay
    #: out of the plugin's identity, so earlier cell ids and poison keys hold.
    late_options: ClassVar[dict[str, Any]] = {}


class MethodFlags(PluginFlags):
    """Flags a noise method may declare (:class:`~uebench.method.Method` inherits them)."""

    #: True when ``craft`` trains a source model with the grid's training config (it reads
    #: ``ctx.train_config``), which then becomes part of the poison's cache key.
    uses_victim_training: ClassVar[bool] = False
    #: True when ``craft`` takes gradient steps (on the noise or a source model): its poison key
    #: then names the crafting precision (:data:`uebench.precision.CRAFT_PRECISION`), so poisons
    #: crafted under bf16 autocast before crafting became fp32 are not reused.
    crafts_by_gradient: ClassVar[bool] = False
    #: Raised by one when what ``craft`` computes at the same options changes (a fix that brings
    #: it closer to its paper's code): it then joins the method's identity, so cell ids and
    #: cached poisons of the earlier computation are never reused.  At 0 it stays out, so
    #: identities are what they were.
    revision: ClassVar[int] = 0
    #: Options that hold another plugin's spec (option -> registry kind: ``"archs"``,
    #: ``"methods"`` or ``"datasets"``), canonicalized inside the method's identity so two
    #: spellings share one cell id.  An option named ``source`` always holds an architecture
    #: spec (:data:`uebench.identity.NESTED_SPECS`).
    nested_specs: ClassVar[dict[str, str]] = {}

    @staticmethod
    def identity_options(options: dict[str, Any]) -> dict[str, Any]:
        """The method's canonical options as they enter its cell ids and poison keys.

        Unchanged by default; a method whose result depends on more than its options replaces
        them here (the ``file`` method puts its file's sha256 in place of the path).
        """
        return options


def plugin_flag(factory: Any, name: str) -> Any:
    """Flag ``name`` of a plugin factory or instance: its own, else the declared default."""
    if not hasattr(MethodFlags, name):
        raise AttributeError(f"{name!r} is no plugin flag")
    return getattr(factory, name, getattr(MethodFlags, name))
