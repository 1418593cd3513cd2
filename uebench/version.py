"""The code each record cites: uebench's version and commit, torch's, and every plugin's.

uebench's own plugins (the entry points of the ``uebench`` distribution) are versioned by
:func:`code_version`.  A third-party plugin is versioned by its distribution's name and version,
and, when its code is not an installed release (an editable install, a local checkout, a module
found on ``sys.path`` or defined at run time), by a hash of its source files
(:func:`plugin_provenance`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata as metadata
import inspect
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__version__ = "0.1.0"


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, str | bool | None]:
    """Version of uebench (and its git commit when run from a checkout) and of torch."""
    commit, dirty = None, None
    here = Path(__file__).resolve().parent
    try:
        commit = (
            subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            or None
        )
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "uebench": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
    }


#: The groups plugins register under (the registries of :mod:`uebench.registry`).
PLUGIN_GROUPS = ("uebench.methods", "uebench.defenses", "uebench.archs", "uebench.datasets")


def is_builtin(factory: Callable[..., Any]) -> bool:
    """Whether a plugin's code is uebench's own (versioned by :func:`code_version`)."""
    module = getattr(_unwrap(factory), "__module__", None) or ""
    return module == "uebench" or module.startswith("uebench.")


def plugin_code(factory: Callable[..., Any]) -> dict[str, Any] | None:
    """What joins a plugin's identity (poison cache keys, cell ids): None for uebench's own.

    uebench's built-in plugins keep the identity they always had, so the cell ids and poison
    keys of existing runs stay valid and those runs keep resuming; their code is cited by
    uebench's version and commit (:func:`code_version`) in every record instead.  A third-party
    plugin adds its distribution and version and, for code not installed from a release, the
    hash of its source: editing a plugin then means a new poison and a new cell id rather than
    the old poison served again.
    """
    if is_builtin(factory):
        return None
    provenance = plugin_provenance(factory)
    keys = ("distribution", "version", "source_sha256")
    return {key: provenance[key] for key in keys if provenance.get(key) is not None}


@functools.cache
def plugin_provenance(factory: Callable[..., Any]) -> dict[str, Any]:
    """Where a plugin's code comes from, for records (cached: it may hash files).

    ``distribution`` and ``version`` name the installed distribution the code is in (None for
    code in none); ``origin`` is ``release`` (its files are the ones the distribution
    installed), ``editable``, ``local`` (installed from a folder), ``path`` (not inside any
    distribution) or ``builtin`` (uebench's own); ``source_sha256`` hashes the source files for
    every origin but ``release`` and ``builtin``.
    """
    target = _unwrap(factory)
    module_name = getattr(target, "__module__", None) or "__main__"
    if is_builtin(factory):
        return {
            "module": module_name,
            "distribution": "uebench",
            "version": __version__,
            "origin": "builtin",
        }
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    dist = _distribution_of(module_name)
    origin = "path"
    if dist is not None:
        direct = _direct_url(dist)
        if (direct.get("dir_info") or {}).get("editable"):
            origin = "editable"
        elif "dir_info" in direct:
            origin = "local"
        elif file is not None and _installed_by(dist, Path(file)):
            origin = "release"
    provenance: dict[str, Any] = {
        "module": module_name,
        "distribution": dist.metadata["Name"] if dist is not None else None,
        "version": dist.version if dist is not None else None,
        "origin": origin,
    }
    if origin != "release":
        provenance["source_sha256"] = _source_hash(module_name, target)
    return provenance


def _unwrap(factory: Callable[..., Any]) -> Callable[..., Any]:
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


@functools.cache
def _entry_point_distributions() -> dict[str, metadata.Distribution]:
    """Top-level module name -> the distribution whose plugin entry points live in it."""
    found: dict[str, metadata.Distribution] = {}
    for group in PLUGIN_GROUPS:
        for entry in metadata.entry_points(group=group):
            if entry.dist is not None:
                found.setdefault(entry.module.split(".")[0], entry.dist)
    return found


def _distribution_of(module_name: str) -> metadata.Distribution | None:
    top = module_name.split(".")[0]
    dist = _entry_point_distributions().get(top)
    if dist is not None:
        return dist
    # A plugin registered at run time: its code may still belong to an installed library
    # (slow to ask, about a second, so only here).
    names = _packages_distributions().get(top, [])
    for name in names:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
    return None


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _direct_url(dist: metadata.Distribution) -> dict[str, Any]:
    """PEP 610's ``direct_url.json`` (installs from a folder, a VCS or a URL; {} from an index)."""
    try:
        text = dist.read_text("direct_url.json")
        value = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _installed_by(dist: metadata.Distribution, file: Path) -> bool:
    """Whether ``file`` is one of the files the distribution installed (its RECORD)."""
    files = dist.files or []
    try:
        relative = file.resolve().relative_to(Path(str(dist.locate_file(""))).resolve())
    except ValueError:  # elsewhere, e.g. a checkout shadowing the install on sys.path
        return False
    return relative.as_posix() in {str(path).replace("\\", "/") for path in files}


def _source_hash(module_name: str, factory: Callable[..., Any]) -> str | None:
    """sha256 of the plugin's source: its package's ``.py`` files, or its module's file.

    A package is hashed whole because a plugin class uses its package's other modules; a
    plugin with no file (defined in a notebook) hashes its own source text when Python can
    find it, else there is nothing to hash (None).
    """
    top = sys.modules.get(module_name.split(".")[0])
    module = sys.modules.get(module_name)
    files: list[tuple[str, Path]] = []
    package_paths = list(getattr(top, "__path__", None) or [])
    if package_paths:
        for root in map(Path, package_paths):
            files += [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*.py"))]
    elif getattr(module, "__file__", None):
        path = Path(module.__file__)  # type: ignore[union-attr, arg-type]
        files.append((path.name, path))
    digest = hashlib.sha256()
    if files:
        for name, path in files:
            digest.update(name.encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError:
                continue
            digest.update(b"\0")
        return digest.hexdigest()
    try:
        digest.update(inspect.getsource(factory).encode())
    except (OSError, TypeError):
        return None
    return digest.hexdigest()
