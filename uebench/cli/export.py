"""``uebench export``: a cell's poisoned training set as files others can read.

    uebench export runs/default/cells/<cell_id>.json poisoned/            # PNG ImageFolder
    uebench export runs/default/cells/<cell_id>.json poisoned.npz --format npz

The PNG tree is ``OUT/train/<class>/<index>.png`` (lossless; ``index`` is the image's place in
the training set as uebench loads it) with ``OUT/manifest.json``; the ``.npz`` holds
``x_train`` (poisoned, uint8 NHWC), ``y_train``, the clean ``x_test``/``y_test`` and
``classes`` (so ``--dataset npz:OUT.npz`` loads it too), with the manifest beside it as
``OUT.manifest.json`` and inside it under ``manifest``.  The method ``file`` reads either back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import zipfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uebench.cli.plugins import add_plugin_flag, require_record_plugins
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.files import (
    atomic_write,
    check_writable,
    file_fault,
    remove_stale_staging,
    staging_folder,
)
from uebench.grid.cell import Cell, cell_poison, craft_poison, load_cell_data
from uebench.poison import Poison
from uebench.storage.poison_files import change_norms, published_sha256
from uebench.storage.records import read_record
from uebench.training import TrainConfig
from uebench.version import code_version

#: The poison cache ``export`` uses for a record outside a run's ``cells/`` folder, when no
#: ``--cache-dir`` is given: ``uebench run``'s own default.
DEFAULT_CACHE = "runs/cache"


def register(commands: Any) -> None:
    """Add ``export`` to the ``uebench`` sub-commands."""
    parser = commands.add_parser(
        "export",
        help="write a cell's poisoned training set (PNG ImageFolder or .npz) with a manifest",
        description="Recreate a cell's poison (from the poison cache, or crafted again), check "
        "it against the record's poison hash and write the poisoned training images.",
    )
    parser.add_argument("record", help="a cell record, RUN_DIR/cells/<id>.json")
    parser.add_argument("out", help="folder to create (png) or .npz file (npz)")
    parser.add_argument("--format", choices=["png", "npz"], default="png", help="default png")
    parser.add_argument(
        "--force", action="store_true", help="replace OUT if it is an earlier export (only then)"
    )
    parser.add_argument(
        "--cache-dir",
        help="poison cache folder (default: cache/ beside the record's run folder, as `uebench "
        f"run` uses; {DEFAULT_CACHE} for a record outside a run)",
    )
    parser.add_argument("--data-root", help="folder holding the dataset files (as for run)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_plugin_flag(parser)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    out = Path(args.out)
    source = Path(args.record)
    if args.format == "npz" and out.suffix != ".npz":
        raise UebenchError(f"--format npz writes a .npz file; got {out}")
    record = read_export_record(source)
    check_target(out, source, args.format, args.force)
    # Every place is checked before the poison is recreated (which may mean crafting it).
    check_writable("export", out.parent)
    remove_stale_staging(out.parent)  # of exports killed mid-write
    cache = Path(args.cache_dir) if args.cache_dir else default_cache(source)
    data, poison = cell_poison_of(record, cache, args.data_root, progress=not args.no_progress)
    manifest = export_cell(record, data, poison, out, args.format)
    print(
        f"exported {manifest['images']} training images of cell {record['cell_id']} "
        f"({manifest['method_spec']}, {manifest['threat']}) to {out}"
    )


def read_export_record(path: Path) -> dict[str, Any]:
    """A cell record as ``uebench run`` wrote it (:func:`uebench.storage.records.read_record`, with
    what recreating its poison needs); anything else is one line."""
    if path.is_dir():
        raise UebenchError(
            f"{path} is a folder; export takes one cell record (RUN_DIR/cells/ID.json)"
        )
    if not path.exists():
        raise UebenchError(f"{path} does not exist; give a cell record (RUN_DIR/cells/ID.json)")
    return read_record(path, for_export=True)


def _run_folder(record: Path) -> Path | None:
    """The results folder a record lies in (``RUN/cells/ID.json``), or None."""
    record = record.resolve()
    return record.parent.parent if record.parent.name == "cells" else None


def default_cache(record: Path) -> Path:
    """Where ``uebench run`` put the record's poison by default: ``cache/`` beside its run
    folder (never a place the record names: paths come from the command line)."""
    run = _run_folder(record)
    return run.parent / "cache" if run is not None else Path(DEFAULT_CACHE)


def check_target(out: Path, record: Path, form: str, force: bool) -> None:
    """Refuse an ``out`` whose replacement would lose anything uebench did not export: a run
    folder (the record's own above all), a folder or file that is no earlier export; an
    earlier export (or an empty folder) is replaced only with ``force``."""
    target, record = out.resolve(), record.resolve()
    if target == record or target in record.parents:  # the run folder itself, or above it
        raise UebenchError(f"{out} holds the record {record} (its run folder?); export elsewhere")
    run = _run_folder(record)
    if run is not None and run / "cells" in (target, *target.parents):
        raise UebenchError(f"{out} lies in the run's records folder {run / 'cells'}")
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_dir() and ((out / "cells").is_dir() or (out / "results.csv").exists()):
        raise UebenchError(f"{out} is a uebench results folder; export never replaces one")
    reason = _not_an_export(out, form)
    if reason is not None:
        raise UebenchError(
            f"{out} exists and is not an earlier {form} export of uebench ({reason}); export "
            "replaces only its own exports, with --force or without: choose another place"
        )
    if not force:
        raise UebenchError(f"{out} exists (an earlier export); pass --force to replace it")


def _not_an_export(out: Path, form: str) -> str | None:
    """Why ``out`` is not an earlier export of ``form`` (an empty folder counts as one: it
    holds nothing to lose), or None when it is."""
    try:
        if form == "npz":
            if not out.is_file():
                return "not a file"
            with zipfile.ZipFile(out) as archive:
                if "manifest.npy" not in archive.namelist():
                    return "no manifest inside"
            with np.load(out, allow_pickle=False) as archive:
                manifest = json.loads(str(archive["manifest"]))
        else:
            if not out.is_dir() or out.is_symlink():
                return "not a folder"
            entries = set(os.listdir(out))
            if not entries:
                return None
            if not entries <= {"manifest.json", "train"} or "manifest.json" not in entries:
                return f"it holds {', '.join(sorted(entries - {'train'})[:3]) or 'no manifest'}"
            for folder in (out / "train").iterdir():
                if not folder.is_dir() or any(
                    not f.name.endswith(".png") for f in folder.iterdir()
                ):
                    return f"{folder} is not a class folder of PNG images"
            manifest = json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        return f"unreadable as one: {type(error).__name__}"
    if not isinstance(manifest, dict) or manifest.get("format") != form:
        return "its manifest names no export of this format"
    if not all(key in manifest for key in ("cell_id", "poison_hash", "published_sha256")):
        return "its manifest is not one export writes"
    return None


def cell_poison_of(
    record: dict[str, Any],
    cache_dir: Path,
    data_root: str | None = None,
    progress: bool = True,
) -> tuple[ImageData, Poison]:
    """The cell's data and the poison it trained on (``classes=`` applied), from the poison
    cache in ``cache_dir`` or crafted again there, refused unless the cell's configuration
    still hashes to the record's id and the poison's hash is the one the record cites.

    Only the record's settings are read from it; every place (cache, data root) comes from
    the caller.
    """
    require_record_plugins(record)
    config = record["config"]
    names = {f.name for f in fields(Cell)} - {"train", "cache_dir", "data_root"}
    try:
        cell = Cell(
            **{k: v for k, v in config.items() if k in names},
            train=TrainConfig(**config["train"]),
            cache_dir=str(cache_dir),
            data_root=data_root,
        )
    except (TypeError, KeyError) as error:
        raise UebenchError(
            f"cell {record['cell_id']}: its record's config is not one this uebench reads ({error})"
        ) from None
    if cell.cell_id != record["cell_id"]:
        raise UebenchError(
            f"cell {record['cell_id']}: its configuration hashes to {cell.cell_id} here (its "
            "data, poison file or plugins' code changed since it ran); nothing exported"
        )
    data = load_cell_data(cell.dataset, cell.data_root, cell.train_size, cell.test_size)
    poison = cell_poison(cell, craft_poison(cell, data, progress), data)
    if poison.content_hash() != record["poison_hash"]:
        raise UebenchError(
            f"cell {record['cell_id']}: the poison found now has hash "
            f"{poison.content_hash()[:12]}, the record cites {record['poison_hash'][:12]} (the "
            "data, the cache or the method's code changed since); nothing exported"
        )
    return data, poison


def export_cell(
    record: dict[str, Any], data: ImageData, poison: Poison, out: Path, form: str
) -> dict[str, Any]:
    """Write the poisoned training set to ``out`` (``png`` folder or ``npz`` file) and its
    manifest; both atomically (a killed export leaves no half-written ``out``)."""
    published = poison.apply(data.x_train)
    change = published.to(torch.int16) - data.x_train.to(torch.int16)
    changed = change.flatten(1).ne(0).any(1)
    manifest = _manifest(record, data, poison, published, change[changed], form)
    text = json.dumps(manifest, indent=2, sort_keys=True)
    if form == "npz":
        arrays = {
            "x_train": published.permute(0, 2, 3, 1).numpy(),
            "y_train": data.y_train.numpy(),
            "x_test": data.x_test.permute(0, 2, 3, 1).numpy(),
            "y_test": data.y_test.numpy(),
            "classes": np.array(data.classes),
            "manifest": np.array(text),
        }
        atomic_write(out, lambda handle: np.savez_compressed(handle, **arrays))
        atomic_write(out.with_name(out.name + ".manifest.json"), lambda h: h.write(text), "w")
    else:
        _write_png_tree(out, data, published, text)
    return manifest


def _manifest(
    record: dict[str, Any],
    data: ImageData,
    poison: Poison,
    published: torch.Tensor,
    change: torch.Tensor,
    form: str,
) -> dict[str, Any]:
    threat = poison.threat
    return {
        "format": form,
        "layout": (
            "train/<class>/<index>.png; index = the image's place in the training set as uebench "
            "loads it (dataset, train_size)"
            if form == "png"
            else "x_train (poisoned, uint8 NHWC), y_train, x_test/y_test (clean), classes"
        ),
        "cell_id": record["cell_id"],
        "dataset": record["config"]["dataset"],
        "train_size": record["config"].get("train_size"),
        "data_fingerprint": data.fingerprint(),
        "classes": list(data.classes),
        "images": len(published),
        "poisoned_images": len(change),
        "method": record.get("method"),
        "method_spec": record.get("method_spec"),
        "protocol": record.get("protocol"),
        "protocol_values": record.get("protocol_values"),
        "poison_hash": poison.content_hash(),
        "published_sha256": published_sha256(published, data.y_train),
        "threat": threat.describe(),  # type: ignore[union-attr]
        "threat_model": threat.as_dict(),  # type: ignore[union-attr]
        "norms": change_norms(change),
        "poison_meta": {k: v for k, v in poison.meta.items() if k != "norms"},
        "plugins": record.get("plugins"),
        "code_version": code_version(),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "use": "uebench run --methods file:<this folder or .npz> with the same --dataset and "
        "--train-size",
    }


def _write_png_tree(out: Path, data: ImageData, published: torch.Tensor, manifest: str) -> None:
    """``out/train/<class>/<index>.png`` and ``out/manifest.json``, built in a staging folder
    beside ``out`` (:func:`uebench.files.staging_folder`: the next export removes it if this
    one is killed) and renamed into place; an earlier export at ``out`` is replaced."""
    from PIL import Image

    for name in data.classes:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise UebenchError(f"class name {name!r} cannot be a folder name; use --format npz")
    folded = [name.casefold() for name in data.classes]
    if len(set(folded)) != len(folded):  # one folder on a case-insensitive file system
        twice = next(name for name in data.classes if folded.count(name.casefold()) > 1)
        raise UebenchError(
            f"class name {twice!r} is used twice (ignoring case), so two classes would share a "
            "folder; use --format npz"
        )
    staging = staging_folder(out.parent)
    file = staging
    try:
        for name in data.classes:
            file = staging / "train" / name
            file.mkdir(parents=True)
        width = len(str(len(published) - 1))
        images = published.permute(0, 2, 3, 1).numpy()
        for index, (image, label) in enumerate(zip(images, data.y_train.tolist(), strict=True)):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            file = staging / "train" / data.classes[label] / f"{index:0{width}d}.png"
            picture.save(file)
        file = staging / "manifest.json"
        file.write_text(manifest)
        if out.exists():  # an earlier export (check_target said so): out of the way first
            file = out
            old = staging_folder(out.parent)
            os.replace(out, old / out.name)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            file = out
            os.replace(staging, out)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise file_fault(error, file) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
