"""Plugin flags: declared once with their defaults (:mod:`uebench.plugin_flags`), inherited by
the base classes, and read alike from factories that derive from no base class."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from uebench.countermeasure import Countermeasure
from uebench.identity import method_identity, poison_key, uses_victim_training
from uebench.method import Method
from uebench.plugin_flags import MethodFlags, PluginFlags, plugin_flag
from uebench.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]


def flags_read() -> set[str]:
    """Every flag name the project reads through :func:`plugin_flag`."""
    names = set()
    for file in (ROOT / "uebench").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "plugin_flag"
                and isinstance(node.args[1], ast.Constant)
            ):
                names.add(node.args[1].value)
    return names


def declared_flags() -> dict[str, bool]:
    """Each flag declared in uebench/plugin_flags.py -> whether it is documented (a ``#:``
    comment above an attribute, a docstring in a static method)."""
    file = ROOT / "uebench" / "plugin_flags.py"
    lines = file.read_text().splitlines()
    found = {}
    for node in ast.walk(ast.parse(file.read_text())):
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if isinstance(item, ast.AnnAssign):
                found[item.target.id] = lines[item.lineno - 2].strip().startswith("#:")
            elif isinstance(item, ast.FunctionDef):
                found[item.name] = ast.get_docstring(item) is not None
    return found


def test_every_flag_read_is_declared_with_its_doc():
    read, declared = flags_read(), declared_flags()
    assert {"uses_victim_training", "nested_specs", "late_options", "identity_options"} <= read
    assert read <= set(declared), read - set(declared)
    assert all(declared.values()), declared


def test_the_base_classes_carry_the_flags():
    assert issubclass(Method, MethodFlags) and issubclass(Countermeasure, PluginFlags)
    assert (Method.uses_victim_training, Method.crafts_by_gradient, Method.revision) == (
        False,
        False,
        0,
    )
    assert Method.nested_specs == {} and Countermeasure.late_options == {}
    assert Method.identity_options({"eps": 0.1}) == {"eps": 0.1}
    with pytest.raises(AttributeError, match="no plugin flag"):
        plugin_flag(Method, "uses_training")


class Derived(Method):
    def __init__(self, *, eps: float = 0.1, mode: str = "a") -> None:
        self.eps, self.mode = eps, mode


class Bare:
    """A method class outside the base classes, declaring nothing."""

    def __init__(self, *, eps: float = 0.1, mode: str = "a") -> None:
        self.eps, self.mode = eps, mode


class BareDeclaring:
    """A method class outside the base classes that declares flags of its own."""

    uses_victim_training = True
    late_options = {"mode": "a"}  # noqa: RUF012

    def __init__(self, *, eps: float = 0.1, mode: str = "a") -> None:
        self.eps, self.mode = eps, mode


def bare_function(*, eps: float = 0.1, mode: str = "a") -> Bare:
    return Bare(eps=eps, mode=mode)


@pytest.fixture
def registered():
    plugins = {
        "flags-derived": Derived,
        "flags-bare": Bare,
        "flags-declaring": BareDeclaring,
        "flags-function": bare_function,
    }
    for name, factory in plugins.items():
        METHODS.register(name, factory)
    yield
    for name in plugins:
        METHODS._extra.pop(name, None)


def test_factories_outside_the_base_classes_get_the_defaults(registered):
    derived = method_identity("flags-derived:eps=0.2")
    for name in ("flags-bare", "flags-function"):
        identity = method_identity(f"{name}:eps=0.2")
        assert {**identity, "name": "flags-derived"} == derived, name
        assert not uses_victim_training(name)
    declaring = method_identity("flags-declaring:eps=0.2")
    assert "mode" not in declaring["options"] and "mode" in derived["options"]
    assert uses_victim_training("flags-declaring")
    train = {"epochs": 1}
    assert poison_key("flags-declaring", "data", train) != poison_key(
        "flags-declaring", "data", {"epochs": 2}
    )
    assert poison_key("flags-bare", "data", train) == poison_key("flags-bare", "data", None)
