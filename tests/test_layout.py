"""The layout itself: no import cycle among uebench's modules, and the identities (cell ids,
poison keys, crafted poisons) that moving code between modules must leave unchanged."""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from pathlib import Path

import pytest
import tomllib
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
    """The project modules ``name`` imports anywhere in it: at module level, in a function and
    under ``if TYPE_CHECKING:`` (an import for annotations only never runs, but two modules
    that name each other's types still depend on each other: a circle all the same).

    ``from package import thing`` counts as importing ``package.thing`` when that is a module
    and ``package`` otherwise; the parent packages Python initializes on the way are not
    counted, or every package that re-exports its modules would be a cycle.
    """
    tree = ast.parse(file.read_text())
    found = set()
    for node in ast.walk(tree):
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


def package_of(module: str, modules: dict) -> str:
    """The subpackage a module lives in (``uebench.grid`` for ``uebench.grid.cell``); a module
    of ``uebench``'s own folder stands for itself."""
    parts = module.split(".")
    for depth in range(len(parts) - 1, 1, -1):
        if ".".join(parts[:depth]) in modules:  # its __init__ makes it a package
            return ".".join(parts[:depth])
    return module


def test_no_import_cycle_among_the_subpackages():
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        home = package_of(name, modules)
        targets = {package_of(t, modules) for t in imports_of(name, file, modules)}
        graph.setdefault(home, set()).update(targets - {home})
    assert "uebench.results" in graph["uebench.benchmark"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle or [])


def test_imports_for_annotations_count(tmp_path):
    typed = tmp_path / "typed.py"
    typed.write_text("if TYPE_CHECKING:\n    from uebench.method import Method\n")
    modules = {**project_modules(), "uebench.typed": typed}
    assert imports_of("uebench.typed", typed, modules) == {"uebench.method"}


def test_every_package_is_installed():
    """A folder of modules missing from pyproject's package list would work from a checkout
    and be missing from a wheel."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    packages = {name for name, file in project_modules().items() if file.name == "__init__.py"}
    assert packages == listed


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
    # TAP at revision 1 (its mean-filled shift and official source schedule): a new id.
    ("cluttered-digits", "tap", "ueraser", "smallcnn:width=16", 2): "8492e7f0d2297052",
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
    "tap:steps=2": "f27be7fef9737e16e12a3b85",  # revision 1
    "random:classes=1": "cfb75520237b0f2a59178b9f",
}

_SOURCE = "source=[smallcnn:width=4]"
#: Tiny poisons of every method that opens crafting with the shared helper: their pinned
#: fingerprints (:func:`noise_fingerprint`) and integer-valued parts are in PINS_FILE.
PINNED_POISON_SPECS = (
    f"emin:steps=2:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}",
    f"emin:form=class:steps=1:max_rounds=2:model_steps=2:batch_size=32:augment=true:{_SOURCE}",
    f"emax:steps=2:source_epochs=1:batch_size=32:{_SOURCE}",
    f"emax:form=class:steps=2:source_epochs=1:batch_size=32:{_SOURCE}",
    "pue:steps=2:max_rounds=2:model_steps=2:batch_size=32:levels=2:draws=1:noise_draws=1:"
    + _SOURCE,
    f"emin-patch:size=4:steps=2:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}",
    "rem:steps=2:rho_steps=1:samples=1:train_steps=4:perturb_every=2:batch_size=32:" + _SOURCE,
    f"tap:steps=2:restarts=2:source_epochs=1:batch_size=32:targets=random:{_SOURCE}",
    f"emin-lbfgs:steps=3:max_rounds=2:model_steps=2:batch_size=32:{_SOURCE}",
)
PINS_FILE = Path(__file__).with_name("pinned_poisons.json")
#: How far a pinned poison's fingerprint may move, relative to its noise's root mean square.
#: Floating-point results differ across CPUs (vector widths, summation order): one thread
#: against two moved emin-lbfgs's noise by 9e-6 of its norm, so 1e-3 leaves a margin of 100
#: while a real change (another seed, one more step, 1% of the pixels moved by 1/255) moves
#: it by more than 1e-2 (test_the_pins_tell_a_changed_poison_apart).
PIN_TOLERANCE = 1e-3
#: Random directions the noise is projected on: a change anywhere in it moves some of them.
PROJECTIONS = 8


def noise_fingerprint(delta: torch.Tensor) -> list[float]:
    """The noise's mean absolute value, root mean square and its projections on
    :data:`PROJECTIONS` fixed random directions (each scaled like an element), in float64."""
    flat = delta.detach().double().reshape(-1)
    directions = torch.randn(
        PROJECTIONS, flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    projections = directions @ flat / flat.numel() ** 0.5
    rms = flat.square().mean().sqrt()
    return [float(flat.abs().mean()), float(rms), *map(float, projections)]


def poison_pin(poison) -> dict:
    """What a pin holds of a crafted poison: exact parts (shape, rows, the threat model,
    the metadata's integers and strings) and float parts (fingerprint, float metadata)."""
    from uebench.poison import VOLATILE_META

    meta = {k: v for k, v in poison.meta.items() if k not in VOLATILE_META}
    return {
        "shape": list(poison.delta.shape),
        # Integers hash the same on every machine.
        "rows_sha256": hashlib.sha256(poison.rows.numpy().tobytes()).hexdigest(),
        "threat": poison.threat.as_dict(),
        "meta": meta,
        "fingerprint": noise_fingerprint(poison.delta),
    }


def pin_mismatch(pinned: dict, crafted: dict) -> str | None:
    """Why ``crafted`` is not the pinned poison (None when it is, within the tolerance)."""
    for key in ("shape", "rows_sha256", "threat"):
        if crafted[key] != pinned[key]:
            return f"{key} differs"
    if set(crafted["meta"]) != set(pinned["meta"]):
        return f"metadata keys differ: {sorted(crafted['meta'])} vs {sorted(pinned['meta'])}"
    for key, value in pinned["meta"].items():
        other = crafted["meta"][key]
        if isinstance(value, float) and isinstance(other, (int, float)):
            if abs(other - value) > PIN_TOLERANCE * max(abs(value), 1.0):
                return f"metadata {key}: {other} vs pinned {value}"
        elif other != value:
            return f"metadata {key}: {other!r} vs pinned {value!r}"
    scale = max(pinned["fingerprint"][1], 1e-12)  # the pinned noise's root mean square
    pairs = zip(crafted["fingerprint"], pinned["fingerprint"], strict=True)
    moved = max(abs(a - b) for a, b in pairs)
    if moved > PIN_TOLERANCE * scale:
        return f"noise moved by {moved / scale:.2e} of its root mean square"
    return None


def craft_pin(spec: str, data) -> dict:
    ctx = CraftContext(torch.device("cpu"), TrainConfig(epochs=1, batch_size=32), False, None)
    method = METHODS.resolve(spec).without_common().build()
    return poison_pin(craft_within_threat(method, data, ctx, spec))


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


@pytest.mark.parametrize("spec", PINNED_POISON_SPECS)
def test_crafted_poisons_are_those_from_before_the_move(spec, tiny_digits):
    pinned = json.loads(PINS_FILE.read_text())[spec]
    mismatch = pin_mismatch(pinned, craft_pin(spec, tiny_digits))
    assert mismatch is None, f"{spec}: {mismatch}"


@pytest.mark.parametrize("spec", PINNED_POISON_SPECS)
def test_the_pins_tell_a_changed_poison_apart(spec, tiny_digits):
    """Each pin fails on a real change: the same method crafted from another seed, and the
    pinned noise with 1% of its elements moved by 1/255."""
    pinned = json.loads(PINS_FILE.read_text())[spec]
    assert pin_mismatch(pinned, craft_pin(f"{spec}:seed=1", tiny_digits)) is not None
    nudged = dict(pinned)
    delta = torch.zeros(pinned["shape"], dtype=torch.float64).reshape(-1)
    moved = torch.randperm(len(delta), generator=torch.Generator().manual_seed(0))
    delta[moved[: max(1, len(delta) // 100)]] = 1 / 255
    nudged["fingerprint"] = [
        a + b for a, b in zip(pinned["fingerprint"], noise_fingerprint(delta), strict=True)
    ]
    # Projections are linear in the noise: pinned + fingerprint(change) = fingerprint(moved).
    nudged["fingerprint"][:2] = pinned["fingerprint"][:2]
    assert pin_mismatch(pinned, nudged) is not None


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


if __name__ == "__main__":
    # Re-pin (only when a change of the crafted poisons is intended and said in its commit):
    # python tests/test_layout.py > tests/pinned_poisons.json
    data = load_dataset("digits:size=8", None, 60, 30, seed=0)
    pins = {spec: craft_pin(spec, data) for spec in PINNED_POISON_SPECS}
    json.dump(pins, sys.stdout, indent=1, sort_keys=True)
    print()
