"""``transfer``: noise crafted on another dataset, applied to this one (§4.4).

The noise method runs on the *source* dataset.  Class-wise noise is mapped class to class: each
target class takes the noise of the source class it is mapped to (Table 4's ImageNet→CIFAR-10
mapping is ``examples/imagenet_to_cifar10_wnids.csv``); target classes left out of the mapping
stay clean, which gives Figure 3(c)'s four-unlearnable-classes setting.  Sample-wise noise
belongs to images, so it goes to the target images that *are* source images (byte-identical),
e.g. CIFAR-10's ships inside ``add-classes:base=cifar100:extra=cifar10:classes=ship``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import torch

from uebench.data import ImageData
from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.registry import METHODS
from uebench.scenarios import resolve_classes
from uebench.threat import ThreatModel


def read_class_mapping(path: str | Path) -> list[tuple[str, str]]:
    """(target class, source class) pairs from a CSV with a header ``target,source`` or a JSON
    object ``{"target": "source"}``; classes are names or numbers."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as error:
        raise UebenchError(f"cannot read class mapping {path}: {error.strerror}") from None
    if path.suffix == ".json":
        try:
            mapping = json.loads(text)
        except ValueError as error:
            raise UebenchError(f"class mapping {path} is not valid JSON: {error}") from None
        if not isinstance(mapping, dict):
            raise UebenchError(f"class mapping {path} must be a JSON object target → source")
        return [(str(k), str(v)) for k, v in mapping.items()]
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"target", "source"} <= set(rows[0]):
        raise UebenchError(f"class mapping {path} needs a CSV header with 'target' and 'source'")
    return [(row["target"].strip(), row["source"].strip()) for row in rows]


class Transfer(Method):
    """Class-wise noise of ``method`` crafted on ``dataset``, mapped onto this dataset's classes."""

    nested_specs: ClassVar[dict[str, str]] = {"method": "methods", "dataset": "datasets"}

    def __init__(
        self,
        *,
        method: str = "emin:form=class",
        dataset: str = "cifar10",
        root: str | None = None,
        train_size: int | None = None,
        mapping: str | None = None,
    ) -> None:
        self.method = method
        self.dataset = dataset
        self.root = root
        self.train_size = train_size
        self.mapping = mapping
        self.pairs = read_class_mapping(mapping) if mapping else None  # fail early on a bad file

    def threat_model(self) -> ThreatModel | None:
        """The budget of the method whose noise it transfers."""
        return METHODS.build(self.method).threat_model()

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        source = load_dataset(self.dataset, self.root, self.train_size, None)
        if source.image_shape != data.image_shape:
            raise UebenchError(
                f"transfer: {self.dataset} images are {source.image_shape}, the target's "
                f"{data.image_shape}; load the source at the target's size"
            )
        crafted = ctx.craft(self.method, source)
        if crafted.form == "sample" and len(crafted.rows) == len(source.y_train):
            return self._by_image(crafted, source, data)
        if crafted.form != "class" or len(crafted.delta) != source.num_classes:
            raise UebenchError(
                f"transfer needs class-wise or sample-wise noise; {self.method!r} gives "
                f"{crafted.form!r}"
            )
        targets_to_sources = self._class_map(data, source)
        bank = torch.zeros(data.num_classes, *data.image_shape)
        for target, origin in targets_to_sources.items():
            bank[target] = crafted.delta[origin]
        mapped = torch.tensor(sorted(targets_to_sources), dtype=torch.long)
        rows = torch.where(torch.isin(data.y_train, mapped), data.y_train, -1)
        meta = {
            "form": "class",
            "source_dataset": source.name,
            "source_fingerprint": source.fingerprint(),
            "source_poison": crafted.content_hash(),
            "class_map": {
                data.classes[target]: source.classes[origin]
                for target, origin in targets_to_sources.items()
            },
        }
        if self.mapping:
            meta["mapping_sha256"] = hashlib.sha256(Path(self.mapping).read_bytes()).hexdigest()
        return Poison(bank, rows, crafted.threat, meta)

    def _by_image(self, crafted: Poison, source: ImageData, data: ImageData) -> Poison:
        """Sample-wise noise onto the target images that are byte-identical to source images."""
        owners = {_image_key(image): index for index, image in enumerate(source.x_train)}
        found = [owners.get(_image_key(image), -1) for image in data.x_train]
        origin = torch.tensor(found, dtype=torch.long)
        hit = origin >= 0
        if not hit.any():
            raise UebenchError(f"transfer: no training image of the target is in {self.dataset}")
        rows = torch.where(hit, crafted.rows[origin.clamp(min=0)], -1)
        meta = {
            "form": "sample",
            "source_dataset": source.name,
            "source_fingerprint": source.fingerprint(),
            "source_poison": crafted.content_hash(),
            "images_matched": int(hit.sum()),
        }
        return Poison(crafted.delta, rows, crafted.threat, meta)

    def _class_map(self, data: ImageData, source: ImageData) -> dict[int, int]:
        """Target class → source class: the mapping file, else equal names, else equal numbers."""
        if self.pairs is not None:
            mapped: dict[int, int] = {}
            for target_name, source_name in self.pairs:
                (target,) = resolve_classes([target_name], data.classes)
                if target in mapped:
                    raise UebenchError(f"class mapping lists target class {target_name!r} twice")
                (mapped[target],) = resolve_classes([source_name], source.classes)
            return mapped
        source_names = {name.lower(): index for index, name in enumerate(source.classes)}
        if all(name.lower() in source_names for name in data.classes):
            return {k: source_names[name.lower()] for k, name in enumerate(data.classes)}
        if data.num_classes == source.num_classes:
            return {k: k for k in range(data.num_classes)}
        raise UebenchError(
            f"transfer: the classes of {self.dataset} and the target differ; give mapping=FILE"
        )


def _image_key(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()
