"""The layout itself: no import cycle among uebench's modules, and the identities (cell ids,
poison keys, crafted poisons) that moving code between modules must leave unchanged."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.grid import GridConfig
from uebench.identity import poison_key
from uebench.method import CraftContext, craft_within_threat
from uebench.registry import METHODS
from uebench.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
#: Installed package name -> the folder its modules live in (pyproject's package-dir).
PACKAGES = {
    "uebench": ROOT / "uebench",
    "uebench.methods": ROOT / "methods",
    "uebench.attacks_defenses": ROOT / "attacks_defenses",
}


def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name."""
    modules = {}
    for package, folder in PACKAGES.items():
        for file in folder.rglob("*.py"):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = file
    return modules


def imports_of(name: str, file: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in it (module level or in a function;
    not under ``if TYPE_CHECKING:``).

    ``from package import thing`` counts as importing ``package.thing`` when that is a module
    and ``package`` otherwise; the parent packages Python initializes on the way are not
    counted, or every package that re-exports its modules would be a cycle.
    """
    tree = ast.parse(file.read_text())
    # ``if TYPE_CHECKING:`` imports never run (annotations only), so they make no loop.
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if file.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of modules around it), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle_among_the_projects_modules():
    modules = project_modules()
    graph = {name: imports_of(name, file, modules) for name, file in modules.items()}
    assert {"uebench.grid.runner", "uebench.identity", "uebench.methods.error_minimizing"} <= set(
        graph
    )
    assert "uebench.registry" in graph["uebench.identity"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Computed by the code before issue 20 moved identities, backends and helpers (commit 9516a13);
# the keys of emin, emax and tap and the tap and emin-lbfgs poisons as issue 19 changed them
# (crafting precision in gradient methods' keys, TAP's source check, the lbfgs solver), computed
# on main before this branch was merged into it (commit 7e07dd9).
PINNED_CELL_IDS = {
    ("cluttered-digits", "emin", "none", "smallcnn:width=16", 0): "e8f404d4f6615afe",
    (
        "cluttered-digits",
        "emin:source=[vgg11:width=32]",
        "cutmix+earlystop",
        "smallcnn",
        1,
    ): "fdcd33c3a89c50b9",
    ("cluttered-digits", "rem", "advtrain", "smallcnn:width=16", 0): "a5595185d9d19e0d",
    ("cluttered-digits", "tap", "ueraser", "smallcnn:width=16", 2): "56af8912955e8d08",
    ("cluttered-digits", "pue:form=class", "jpeg", "smallcnn:width=16", 0): "692b4665d2bf3fe8",
    (
        "cluttered-digits",
        "emin-patch",
        "partial:rate=0.5",
        "smallcnn:width=16",
        0,
    ): "4900632b0422ae04",
    ("cifar10", "mix", "grayscale", "resnet18", 0): "227e262107828fba",
}

PINNED_POISON_KEYS = {
    "emin": "6336dd36feb830e814943a0b",
    "emax": "6b30c488ee7e030b8474cc02",
    "tap:steps=2": "f371bfd3b57b8c1bc04624c1",
    "random:classes=1": "cfb75520237b0f2a59178b9f",
}

_SOURCE = "source=[smallcnn:width=4]"
#: Content hashes of tiny poisons of every method that opens crafting with the shared helper.
PINNED_POISON_HASHES = {
    f"emin:steps=2:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}": (
        "20db29cd1555b15fbf66863429fa54f5a61bddd54ba3967e44707f6be58f86a0"
    ),
    f"emin:form=class:steps=1:max_rounds=2:model_steps=2:batch_size=32:augment=true:{_SOURCE}": (
        "0ddda4885c88077b5422832680a3ca381d292bcc9813030a9cf9fdc8e91ef63b"
    ),
    f"emax:steps=2:source_epochs=1:batch_size=32:{_SOURCE}": (
        "b9b867037264dfdabe539c58aeba8f5e08492791914b4d9b9462eb0d94f09d30"
    ),
    f"emax:form=class:steps=2:source_epochs=1:batch_size=32:{_SOURCE}": (
        "0d31c5462996e2f62cd2551b0f706ae5fdf55945b0be65a71abfa338a92f5527"
    ),
    (
        "pue:steps=2:max_rounds=2:model_steps=2:batch_size=32:levels=2:draws=1:noise_draws=1:"
        + _SOURCE
    ): "139a9a2afecc5794fe2cc02952ee28c5823408b5fe875d0dd11fd17e34f2c14a",
    f"emin-patch:size=4:steps=2:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}": (
        "8e5ecb41e790e5a8dbef6f4c99453135ceb579340f0a8030e1f0ab0f8f9cd0e1"
    ),
    (
        "rem:steps=2:rho_steps=1:samples=1:train_steps=4:perturb_every=2:batch_size=32:" + _SOURCE
    ): "91f97b108e8eaf9c2956afb8d144a0906ba0816f77e97166f4574b62cc8ff644",
    f"tap:steps=2:restarts=2:source_epochs=1:batch_size=32:targets=random:{_SOURCE}": (
        "17be0ac3c8fa989b6f609ee11f90092bf00309309a8bbe2f8159f49bc5698f73"
    ),
    f"emin-lbfgs:steps=3:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}": (
        "2568a9e6123eece9932364af7ff49ca99a7ca1a3f9978d817648e0ed7b2130ec"
    ),
}


def test_cell_ids_are_those_from_before_the_move():
    for (dataset, method, defense, arch, seed), pinned in PINNED_CELL_IDS.items():
        (cell,) = GridConfig(
            dataset=dataset, methods=[method], defenses=[defense], archs=[arch], seeds=[seed]
        ).cells()
        assert cell.cell_id == pinned, (dataset, method, defense, arch, seed)


@pytest.fixture(scope="module")
def tiny_digits():
    return load_dataset("digits:size=8", None, 60, 30, seed=0)


def test_poison_keys_are_those_from_before_the_move(tiny_digits):
    assert tiny_digits.fingerprint() == "4a46f8eeb115193a"
    train = TrainConfig(epochs=1, batch_size=32).as_dict()
    for method, pinned in PINNED_POISON_KEYS.items():
        assert poison_key(method, tiny_digits.fingerprint(), train) == pinned, method


@pytest.fixture
def one_thread():
    """The pins were crafted with one torch thread: a float sum split over more threads rounds
    differently, and emin-lbfgs's Adam steps carry that into the noise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("spec", sorted(PINNED_POISON_HASHES))
def test_crafted_poisons_are_those_from_before_the_move(spec, tiny_digits, one_thread):
    ctx = CraftContext(torch.device("cpu"), TrainConfig(epochs=1, batch_size=32), False, None)
    method = METHODS.resolve(spec).without_common().build()
    poison = craft_within_threat(method, tiny_digits, ctx, spec)
    assert poison.content_hash() == PINNED_POISON_HASHES[spec]


def test_no_method_writes_out_the_crafting_opening():
    """Seeding torch, building or training the source model, taking the crafting set and
    making the source model's steps are :func:`uebench.crafting.start_crafting`'s job, not
    a method's ``craft`` (a source-training recipe it hands over is the method's own)."""
    opening = {"manual_seed", "build_model", "crafting_set", "trained_source"}
    opening |= {"SourceModelSteps", "SmoothedSourceSteps"}
    for file in sorted(PACKAGES["uebench.methods"].glob("*.py")):
        crafts = [
            node
            for node in ast.walk(ast.parse(file.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name == "craft"
        ]
        for node in (inner for craft in crafts for inner in ast.walk(craft)):
            if not isinstance(node, ast.Call):
                continue
            function = node.func
            name = getattr(function, "attr", None) or getattr(function, "id", None)
            # A method's own generators (torch.Generator().manual_seed(...)) are its business.
            owned = isinstance(function, ast.Attribute) and isinstance(function.value, ast.Call)
            assert name not in opening or owned, f"{file.name}:{node.lineno} calls {name}"


def test_backends_are_a_registry_over_one_interface():
    from uebench.grid import BACKENDS, CellsFailed
    from uebench.grid.backends import get_backend
    from uebench.grid.outcome import CellsFailed as below_both

    assert set(BACKENDS) == {"local", "ray"} and CellsFailed is below_both
    assert get_backend("local") is BACKENDS["local"]
    with pytest.raises(UebenchError, match="unknown backend 'slurm'; valid: local, ray"):
        get_backend("slurm")
