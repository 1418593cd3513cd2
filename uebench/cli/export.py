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
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uebench.cli.plugins import add_plugin_flag, require_record_plugins
from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.grid.cell import Cell, cell_poison, craft_poison, load_cell_data
from uebench.poison import Poison
from uebench.poison_files import change_norms, published_sha256
from uebench.training import TrainConfig
from uebench.version import code_version


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
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_plugin_flag(parser)
    parser.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if args.format == "npz" and out.suffix != ".npz":
        raise UebenchError(f"--format npz writes a .npz file; got {out}")
    if out.exists() and not args.force:
        raise UebenchError(f"{out} exists; pass --force to replace it")
    record = read_record(Path(args.record))
    data, poison = cell_poison_of(record, progress=not args.no_progress)
    manifest = export_cell(record, data, poison, out, args.format)
    print(
        f"exported {manifest['images']} training images of cell {record['cell_id']} "
        f"({manifest['method_spec']}, {manifest['threat']}) to {out}"
    )


def read_record(path: Path) -> dict[str, Any]:
    """A cell record as ``uebench run`` wrote it; anything else is one line."""
    if path.is_dir():
        raise UebenchError(
            f"{path} is a folder; export takes one cell record (RUN_DIR/cells/ID.json)"
        )
    try:
        record = json.loads(path.read_text())
        if not all(isinstance(record[k], str) for k in ("cell_id", "poison_hash")):
            raise TypeError
        dict(record["config"])
    except FileNotFoundError:
        raise UebenchError(
            f"{path} does not exist; give a cell record (RUN_DIR/cells/ID.json)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError):
        raise UebenchError(f"{path} is not a uebench cell record") from None
    return record


def cell_poison_of(record: dict[str, Any], progress: bool = True) -> tuple[ImageData, Poison]:
    """The cell's data and the poison it trained on (``classes=`` applied), from the poison
    cache or crafted again there, refused unless its hash is the one the record cites."""
    require_record_plugins(record)
    config = record["config"]
    names = {f.name for f in fields(Cell)} - {"train"}
    try:
        cell = Cell(
            **{k: v for k, v in config.items() if k in names},
            train=TrainConfig(**config["train"]),
        )
    except TypeError as error:
        raise UebenchError(
            f"cell {record['cell_id']}: its record's config is not one this uebench reads ({error})"
        ) from None
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
    """``out/train/<class>/<index>.png`` and ``out/manifest.json``, built in a temporary folder
    beside ``out`` and renamed into place."""
    from PIL import Image

    for name in data.classes:
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise UebenchError(f"class name {name!r} cannot be a folder name; use --format npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        for name in data.classes:
            (staging / "train" / name).mkdir(parents=True)
        width = len(str(len(published) - 1))
        images = published.permute(0, 2, 3, 1).numpy()
        for index, (image, label) in enumerate(zip(images, data.y_train.tolist(), strict=True)):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            picture.save(staging / "train" / data.classes[label] / f"{index:0{width}d}.png")
        (staging / "manifest.json").write_text(manifest)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
