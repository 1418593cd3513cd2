"""A crafted perturbation and how it is applied, saved and verified.

A poison is a bank of noise rows ``delta`` (R × C × H × W, float, [0, 1] units) and, for each
training image, the row it receives (``rows``; -1 leaves the image clean).  Sample-wise noise has
one row per image, class-wise noise one row per class (``rows = y``).  That one shape covers
single unlearnable classes (rows of other classes are -1) and per-sample mixtures of several
class-wise sets (rows drawn from a larger bank).  Every poison keeps to a threat model
(:mod:`uebench.threat`: an L∞, L2 or L0 budget, or unbounded), checked on every row.

A poison may also keep its :class:`Surrogate`, the source model it was crafted against, so that
``uebench certify`` can measure that model; it is saved in the same file and verified on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from uebench.errors import UebenchError
from uebench.files import atomic_write
from uebench.registry import ARCHS
from uebench.threat import ThreatModel

#: Metadata a method records about the run that crafted a poison rather than about the noise;
#: left out of :meth:`Poison.content_hash`.
VOLATILE_META = frozenset({"craft_seconds"})


class _SurrogateMismatch(Exception):
    """A saved surrogate whose weights no longer match their hash."""


@dataclass
class Surrogate:
    """The source model a poison was crafted against: its architecture spec and weights."""

    arch: str
    num_classes: int
    image_shape: tuple[int, int, int]
    state: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        self.image_shape = tuple(int(side) for side in self.image_shape)  # type: ignore[assignment]
        # A copy: a live model's state_dict aliases its weights, which crafting goes on changing;
        # in the standard layout, so a saved surrogate does not depend on how the model ran.
        self.state = {
            name: value.detach().cpu().clone(memory_format=torch.contiguous_format)
            for name, value in self.state.items()
        }

    @classmethod
    def of(
        cls, model: nn.Module, arch: str, num_classes: int, image_shape: tuple[int, int, int]
    ) -> Surrogate:
        """A CPU copy of ``model``'s ``state_dict`` (BatchNorm statistics included)."""
        return cls(arch, num_classes, image_shape, dict(model.state_dict()))

    def build(self, device: torch.device | str = "cpu") -> nn.Module:
        """The model rebuilt from its architecture spec, weights loaded, in eval mode."""
        model = ARCHS.build(self.arch, self.num_classes, self.image_shape)
        try:
            model.load_state_dict(self.state)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise UebenchError(f"surrogate weights do not fit {self.arch!r}: {first}") from None
        return model.to(device).eval()

    def content_hash(self) -> str:
        """sha256 of the architecture, shapes and every tensor's name, dtype, shape and bytes."""
        digest = hashlib.sha256()
        header = {"arch": self.arch, "classes": self.num_classes, "shape": self.image_shape}
        digest.update(json.dumps(header, sort_keys=True).encode())
        for name in sorted(self.state):
            value = self.state[name]
            digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def payload(self) -> dict[str, Any]:
        """What :meth:`Poison.save` stores: plain types and tensors, loadable weights-only."""
        return {
            "arch": self.arch,
            "num_classes": int(self.num_classes),
            "image_shape": list(self.image_shape),
            "state": self.state,
            "sha256": self.content_hash(),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Surrogate:
        """Rebuild from :meth:`payload`, checking its hash."""
        surrogate = cls(
            str(payload["arch"]),
            int(payload["num_classes"]),
            tuple(payload["image_shape"]),  # type: ignore[arg-type]
            dict(payload["state"]),
        )
        if surrogate.content_hash() != payload["sha256"]:
            raise _SurrogateMismatch
        return surrogate


@dataclass
class Poison:
    """Noise rows, the row each training image gets, the threat model it keeps to, what made it.

    ``threat`` is a :class:`~uebench.threat.ThreatModel`, or a float for the common case, an L∞
    ε.  Every row of ``delta`` is checked against it here, so no poison outside its budget can
    exist.  ``surrogate`` (optional) is the source model the noise was crafted against; it is
    not part of :meth:`content_hash`, which identifies the noise a record cites.
    """

    delta: torch.Tensor
    rows: torch.Tensor
    threat: ThreatModel | float
    meta: dict[str, Any] = field(default_factory=dict)
    surrogate: Surrogate | None = None

    def __post_init__(self) -> None:
        self.delta = self.delta.detach().float().cpu().contiguous()
        self.rows = self.rows.detach().long().cpu().contiguous()
        if not isinstance(self.threat, ThreatModel):
            self.threat = ThreatModel.linf(float(self.threat))
        if self.delta.dim() != 4:
            raise UebenchError(f"poison delta must be R×C×H×W, got {tuple(self.delta.shape)}")
        if len(self.rows) and int(self.rows.max()) >= len(self.delta):
            raise UebenchError("poison rows point past the end of its noise bank")
        if not bool(torch.isfinite(self.delta).all()):
            raise UebenchError("poison noise holds NaN or infinite values")
        problem = self.threat.violation(self.delta)
        if problem is not None:
            raise UebenchError(f"poison {problem}")

    @property
    def eps(self) -> float | None:
        """The L∞ budget ε (None under other threat models)."""
        threat: ThreatModel = self.threat  # type: ignore[assignment]
        return threat.budget if threat.norm == "linf" else None

    @property
    def form(self) -> str:
        return str(self.meta.get("form", "sample"))

    def add(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """uint8 images ``x`` plus noise rows ``delta``, rounded within the threat model."""
        return self.threat.apply(x, delta)  # type: ignore[union-attr]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The poisoned copy of the training images ``x`` (uint8 N×C×H×W, in dataset order)."""
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise UebenchError(
                f"poison.apply needs uint8 N×C×H×W images, got {x.dtype} {tuple(x.shape)}"
            )
        if len(x) != len(self.rows):
            raise UebenchError(
                f"poison was made for {len(self.rows)} training images, the data has {len(x)}"
            )
        if x.shape[1:] != self.delta.shape[1:]:
            raise UebenchError(
                f"poison noise has shape {tuple(self.delta.shape[1:])}, images {tuple(x.shape[1:])}"
            )
        out = x.clone()
        hit = torch.nonzero(self.rows >= 0).flatten()
        if len(hit):
            out[hit] = self.add(x[hit], self.delta[self.rows[hit]])
        return out

    def content_hash(self) -> str:
        """sha256 of the noise, the assignment, the budget and the metadata: what a record cites."""
        digest = hashlib.sha256()
        digest.update(self.delta.numpy().tobytes())
        digest.update(self.rows.numpy().tobytes())
        threat: ThreatModel = self.threat  # type: ignore[assignment]
        # L∞ poisons hash as they did before threat models existed, so their hashes hold.
        budget = {"eps": self.eps} if threat.norm == "linf" else {"threat": threat.as_dict()}
        # How long crafting took is not what was crafted: with it, the same config on another
        # run or machine would cite a different hash for the same noise.
        meta = {k: v for k, v in self.meta.items() if k not in VOLATILE_META}
        digest.update(json.dumps({**budget, "meta": meta}, sort_keys=True).encode())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write atomically: a killed process leaves either the old file or the new one."""
        payload = {
            "delta": self.delta,
            "rows": self.rows,
            "threat_json": json.dumps(self.threat.as_dict()),  # type: ignore[union-attr]
            "eps": float(self.eps or 0.0),  # what readers older than threat models look for
            "meta_json": json.dumps(self.meta, sort_keys=True),
            "sha256": self.content_hash(),
        }
        if self.surrogate is not None:
            payload["surrogate"] = self.surrogate.payload()
        atomic_write(Path(path), lambda handle: torch.save(payload, handle))

    @classmethod
    def load(cls, path: str | Path, *, cache_entry: bool = False) -> Poison:
        """Read and verify a saved poison; tampered or truncated files raise one clear line.

        ``cache_entry``: the file is a poison-cache entry, so the error may advise deleting it
        (the cache recrafts it); any other file may be the user's only copy.
        """
        path = Path(path)
        advice = "; delete it to recompute" if cache_entry else ""
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            threat = (
                ThreatModel.from_dict(json.loads(payload["threat_json"]))
                if "threat_json" in payload
                else ThreatModel.linf(float(payload["eps"]))  # saved before threat models
            )
            poison = cls(
                delta=payload["delta"],
                rows=payload["rows"],
                threat=threat,
                meta=json.loads(payload["meta_json"]),
            )
            expected = payload["sha256"]
            if "surrogate" in payload:
                poison.surrogate = Surrogate.from_payload(payload["surrogate"])
        except FileNotFoundError:
            raise UebenchError(f"poison file {path} does not exist") from None
        except _SurrogateMismatch:
            raise UebenchError(
                f"poison file {path} is corrupt (surrogate hash mismatch){advice}"
            ) from None
        except Exception as error:
            raise UebenchError(
                f"poison file {path} is corrupt ({type(error).__name__}){advice}"
            ) from None
        if poison.content_hash() != expected:
            raise UebenchError(f"poison file {path} is corrupt (content hash mismatch){advice}")
        return poison
