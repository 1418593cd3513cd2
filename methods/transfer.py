"""``transfer``: class-wise noise crafted on another dataset, applied by a class mapping (§4.4).

The noise method runs on the *source* dataset (e.g. ImageNet resized to 32×32); each target
class then takes the noise of the source class it is mapped to (Table 4's ImageNet→CIFAR-10
mapping is ``examples/imagenet_to_cifar10.csv``).  Target classes left out of the mapping stay
clean, which gives Figure 3(c)'s four-unlearnable-classes setting.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import ClassVar

import torch

from uebench.data import ImageData
from uebench.errors import UebenchError
from uebench.method import CraftContext, Method
from uebench.poison import Poison
from uebench.scenarios import resolve_classes


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

    def craft(self, data: ImageData, ctx: CraftContext) -> Poison:
        from uebench.datasets import load_dataset

        source = load_dataset(self.dataset, self.root, self.train_size, None)
        if source.image_shape != data.image_shape:
            raise UebenchError(
                f"transfer: {self.dataset} images are {source.image_shape}, the target's "
                f"{data.image_shape}; load the source at the target's size"
            )
        crafted = ctx.craft(self.method, source)
        if crafted.form != "class" or len(crafted.delta) != source.num_classes:
            raise UebenchError(f"transfer needs class-wise noise; {self.method!r} is not")
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
        return Poison(bank, rows, crafted.eps, meta)

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
