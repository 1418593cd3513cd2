"""``uebench certify``: certified (q, η)-learnability of a cell's victim or a poison's surrogate.

    uebench certify runs/default/cells/<cell_id>.json                 # the victim (--save-models)
    uebench certify runs/default/cells/<cell_id>.json --model surrogate
    uebench certify runs/cache/<key>.pt --dataset cluttered-digits    # a poison's surrogate

The table is printed and stored with the run: ``RUN_DIR/certify/<cell_id>-<model>.{json,csv,png}``
for a cell, ``<poison folder>/certify/<key>.{json,csv,png}`` for a poison file (or ``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uebench.analysis.certify import (
    DEFAULT_ETAS,
    certify_model,
    check_settings,
    save_certificate,
)
from uebench.cli.plugins import add_plugin_flag, require_record_plugins
from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.files import check_writable
from uebench.grid.cell import load_cell_data
from uebench.identity import poison_key
from uebench.poison import Poison
from uebench.registry import ARCHS
from uebench.spec import parse_float
from uebench.storage.poison_files import DELTA_KEYS, IMAGE_KEYS, IMAGE_SUFFIXES
from uebench.storage.records import read_record
from uebench.training import resolve_device


@dataclass
class Target:
    """A model to certify, the clean data to certify it on, where results go and what it is."""

    model: nn.Module
    data: ImageData
    out: Path
    name: str
    meta: dict[str, Any]


def register(commands: Any) -> None:
    """Add ``certify`` to the ``uebench`` sub-commands."""
    parser = commands.add_parser(
        "certify",
        help="certified (q, eta)-learnability of a trained victim or a crafting surrogate",
        description="Parametric smoothing: N Gaussian weight draws, clean test accuracy of each, "
        "and the certified upper bound on the q-quantile of accuracy within l2 radius eta.",
    )
    parser.add_argument(
        "target",
        help="a cell record (RUN_DIR/cells/ID.json) or a poison-cache file (<cache>/<key>.pt)",
    )
    parser.add_argument(
        "--model",
        choices=["victim", "surrogate"],
        help="for a cell: its saved victim (default) or its poison's crafting surrogate",
    )
    parser.add_argument("--dataset", help="for a poison file: the dataset spec it was made on")
    parser.add_argument("--data-root", help="for a poison file: folder holding the dataset")
    parser.add_argument("--train-size", type=int, help="for a poison file: as in uebench run")
    parser.add_argument("--test-size", type=int, help="stratified subset of the test set")
    parser.add_argument("-n", "--n", type=int, default=1000, help="weight draws N (1000)")
    parser.add_argument("--sigma", type=_float, default=0.25, help="draw std σ (0.25)")
    parser.add_argument("--q", type=_float, default=0.9, help="quantile q (0.9)")
    parser.add_argument("--alpha", type=_float, default=0.01, help="1 - confidence (0.01)")
    parser.add_argument(
        "--etas",
        type=_float_list,
        default=list(DEFAULT_ETAS),
        help="comma-separated radii η (default 0.001 … 2.0)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weight draws")
    parser.add_argument(
        "--batch-draws", type=int, default=1, help="perturbed models evaluated at once (vmap)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--out", help="folder for the json/csv/png (default: with the run)")
    parser.add_argument("--no-plot", action="store_true", help="skip the png")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_plugin_flag(parser)
    parser.set_defaults(handler=_certify)


def _float(text: str) -> float:
    try:
        return parse_float(text)
    except UebenchError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _float_list(text: str) -> list[float]:
    return [_float(part) for part in text.split(",") if part.strip()]


def _certify(args: argparse.Namespace) -> None:
    check_settings(args.n, args.sigma, args.q, args.alpha, args.etas)
    device = resolve_device(args.device)
    target = resolve_target(args)
    out = Path(args.out) if args.out else target.out
    # The draws take minutes; a file in the way of the output must fail before them, not after.
    check_writable("certify --out" if args.out else "certify", out)
    certificate = certify_model(
        target.model,
        target.data.x_test,
        target.data.y_test,
        n=args.n,
        sigma=args.sigma,
        q=args.q,
        alpha=args.alpha,
        etas=args.etas,
        seed=args.seed,
        device=device,
        batch_draws=args.batch_draws,
        progress=not args.no_progress,
        meta={**target.meta, "device": str(device), "test_size": len(target.data.y_test)},
    )
    written = save_certificate(certificate, out, target.name, plot=not args.no_plot)
    print(certificate.summary())
    print(f"saved {', '.join(str(path) for path in written)}")


def resolve_target(args: argparse.Namespace) -> Target:
    """The model and data named by ``args.target`` (a cell record or a poison file)."""
    path = Path(args.target)
    if not path.exists():
        raise UebenchError(f"{path} does not exist; give a cell record or a poison file")
    if path.is_dir():
        raise UebenchError(_folder_hint(path))
    if path.suffix == ".json":
        return cell_target(path, args.model or "victim", args.test_size)
    if args.model == "victim":
        raise UebenchError("a poison file holds only its surrogate; drop --model victim")
    return poison_target(path, args)


def _folder_hint(folder: Path) -> str:
    """What certify takes, for a folder given instead: a few of its cell records, if any."""
    cells = folder if folder.name == "cells" else folder / "cells"
    records = sorted(cells.glob("*.json")) if cells.is_dir() else []
    what = f"{folder} is a folder; certify takes one cell record (RUN_DIR/cells/<id>.json)"
    if not records:
        return f"{what} or a poison file (<cache>/<key>.pt)"
    shown = ", ".join(str(record) for record in records[:3])
    more = f" and {len(records) - 3} more" if len(records) > 3 else ""
    return f"{what}, e.g. {shown}{more}"


def cell_target(path: Path, which: str = "victim", test_size: int | None = None) -> Target:
    """A grid cell's saved victim (``which="victim"``) or its poison's crafting surrogate."""
    record = read_record(path, for_export=True)  # one line naming the file if malformed
    require_record_plugins(record)
    config, cell_id = record["config"], record["cell_id"]
    data = load_cell_data(
        config["dataset"],
        config.get("data_root"),
        config.get("train_size"),
        test_size if test_size is not None else config.get("test_size"),
    )
    meta = {"target": str(path), "cell_id": cell_id, "method": record.get("method")}
    out = path.parent.parent / "certify"
    if which == "victim":
        if not record.get("model_path"):
            raise UebenchError(
                f"cell {cell_id} has no saved model; rerun it with uebench run --save-models"
            )
        model = ARCHS.build(record["arch"], data.num_classes, data.image_shape)
        model_path = Path(record["model_path"])
        _verify_model_file(model_path, record.get("model_sha256"), cell_id)
        _load_state(model, model_path)
        meta.update({"model": "victim", "arch": record["arch"], "model_path": str(model_path)})
        return Target(model, data, out, f"{cell_id}-victim", meta)
    key = record.get("poison", {}).get("cache_key") or poison_key(
        record["method"], record["data_fingerprint"], config.get("train")
    )
    poison_path = Path(config.get("cache_dir", "runs/cache")) / f"{key}.pt"
    if not poison_path.exists():
        raise UebenchError(
            f"poison {poison_path} of cell {cell_id} is not in the cache; give the poison file"
        )
    poison = Poison.load(poison_path, cache_entry=True)
    model, surrogate_meta = _surrogate(poison, poison_path, data, cache_entry=True)
    meta.update(surrogate_meta)
    return Target(model, data, out, f"{cell_id}-surrogate", meta)


def poison_target(path: Path, args: argparse.Namespace) -> Target:
    """A poison file's surrogate, on the dataset ``args`` name (as ``uebench run`` loads it)."""
    poison = _load_poison_file(path)  # before the dataset: a wrong file fails at once
    data = load_dataset(
        args.dataset or "cluttered-digits", args.data_root, args.train_size, args.test_size, seed=0
    )
    model, meta = _surrogate(poison, path, data)
    return Target(model, data, path.parent / "certify", path.stem, {"target": str(path), **meta})


#: What certify reads, for the errors that refuse something else.
ACCEPTS = "certify reads a cell record (.json) or a poison-cache file (<cache>/<key>.pt)"
#: Fields every poison-cache file has (:meth:`Poison.save`) and no file of images does.
_CACHE_FIELDS = {"rows", "meta_json", "sha256"}


def _load_poison_file(path: Path) -> Poison:
    """The poison-cache file ``path``; poisoned images (what ``file:path=`` reads) are refused
    as such, not called corrupt: they hold no surrogate to certify."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy", *IMAGE_SUFFIXES):
        raise UebenchError(_images_error(path, suffix))
    try:
        return Poison.load(path)
    except UebenchError:
        # Only a failed load is looked into (a second read): a poisoned-images .pt loads with
        # torch.load but lacks the cache's fields; a damaged cache file is corrupt, as it says.
        kind = _payload_kind(path)
        if kind == "images":
            raise UebenchError(_images_error(path, suffix or "(no suffix)")) from None
        if kind == "weights":
            raise UebenchError(
                f"{ACCEPTS}; {path} holds a model's weights: certify a saved victim through its "
                "cell record (RUN_DIR/cells/<id>.json)"
            ) from None
        raise


def _payload_kind(path: Path) -> str | None:
    """``images`` or ``weights`` for a torch file that is not a poison-cache entry; None for
    one that is (or may be: it has a cache field) and for one torch cannot read."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(payload, torch.Tensor):
        return "images"
    if not isinstance(payload, dict) or _CACHE_FIELDS & set(payload):
        return None
    if set(payload) & set(IMAGE_KEYS + DELTA_KEYS):
        return "images"
    if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
        return "weights"
    return None


def _images_error(path: Path, suffix: str) -> str:
    return (
        f"{ACCEPTS}; {path} is a {suffix} file of poisoned images (or perturbations), which "
        f"holds no model: bench or run it with file:path={path}"
    )


def _surrogate(
    poison: Poison, path: Path, data: ImageData, cache_entry: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The surrogate saved in ``poison`` (read from ``path``); ``cache_entry``: ``path`` is the
    poison cache's own file (found through a cell record), which the cache recrafts when
    deleted."""
    surrogate = poison.surrogate
    if surrogate is None:
        recraft = ": delete it to recraft" if cache_entry else ""
        raise UebenchError(
            f"poison {path} keeps no crafting surrogate (its method does not save one, or it "
            f"was crafted before surrogates were kept{recraft})"
        )
    if (surrogate.num_classes, surrogate.image_shape) != (data.num_classes, data.image_shape):
        raise UebenchError(
            f"surrogate of {path} is for {surrogate.num_classes} classes of "
            f"{surrogate.image_shape} images, the dataset has {data.num_classes} of "
            f"{data.image_shape}; pass the dataset it was crafted on"
        )
    if len(poison.rows) != len(data.y_train):
        raise UebenchError(
            f"poison {path} was made for {len(poison.rows)} training images, the dataset has "
            f"{len(data.y_train)}; pass the same --dataset/--train-size as the run"
        )
    meta = {
        "model": "surrogate",
        "arch": surrogate.arch,
        "poison": str(path),
        "poison_meta": poison.meta,
    }
    return surrogate.build(), meta


def _verify_model_file(path: Path, expected: Any, cell_id: str) -> None:
    """Refuse a saved victim whose bytes are not those its cell's run wrote (the record keeps
    their sha256): certifying altered weights would certify a model nobody trained."""
    if expected is None:  # records written before models were hashed
        print(
            f"uebench: warning: cell {cell_id}'s record keeps no hash of its model (written "
            "before they were kept); its weights are not verified",
            file=sys.stderr,
        )
        return
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise UebenchError(f"saved model {path} does not exist") from None
    except OSError as error:
        raise UebenchError(f"cannot read saved model {path}: {error.strerror}") from None
    if actual != expected:
        raise UebenchError(
            f"saved model {path} is not the one cell {cell_id} trained (sha256 differs from its "
            "record); rerun the cell with uebench run --save-models"
        )


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UebenchError(f"saved model {path} does not exist") from None
    except Exception as error:
        raise UebenchError(f"saved model {path} is unreadable ({type(error).__name__})") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).splitlines()[0]
        raise UebenchError(f"saved model {path} does not fit its architecture: {first}") from None
