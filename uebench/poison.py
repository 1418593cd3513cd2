"""A crafted perturbation and how it is applied, saved and verified.

A poison is a bank of noise rows ``delta`` (R × C × H × W, float, [0, 1] units) and, for each
training image, the row it receives (``rows``; -1 leaves the image clean).  Sample-wise noise has
one row per image, class-wise noise one row per class (``rows = y``).  That one shape covers
single unlearnable classes (rows of other classes are -1) and per-sample mixtures of several
class-wise sets (rows drawn from a larger bank).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uebench.data import add_noise_uint8
from uebench.errors import UebenchError


@dataclass
class Poison:
    """Noise rows, the row each training image gets, the ε bound and what made it."""

    delta: torch.Tensor
    rows: torch.Tensor
    eps: float
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.delta = self.delta.detach().float().cpu().contiguous()
        self.rows = self.rows.detach().long().cpu().contiguous()
        if self.delta.dim() != 4:
            raise UebenchError(f"poison delta must be R×C×H×W, got {tuple(self.delta.shape)}")
        if len(self.rows) and int(self.rows.max()) >= len(self.delta):
            raise UebenchError("poison rows point past the end of its noise bank")
        peak = float(self.delta.abs().max()) if self.delta.numel() else 0.0
        if peak > self.eps + 1e-6:
            raise UebenchError(f"poison noise reaches {peak:.5f}, beyond ε={self.eps:.5f}")

    @property
    def form(self) -> str:
        return str(self.meta.get("form", "sample"))

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
            out[hit] = add_noise_uint8(x[hit], self.delta[self.rows[hit]], self.eps)
        return out

    def content_hash(self) -> str:
        """sha256 of the noise, the assignment, ε and the metadata: what the record cites."""
        digest = hashlib.sha256()
        digest.update(self.delta.numpy().tobytes())
        digest.update(self.rows.numpy().tobytes())
        digest.update(json.dumps({"eps": self.eps, "meta": self.meta}, sort_keys=True).encode())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write atomically: a killed process leaves either the old file or the new one."""
        payload = {
            "delta": self.delta,
            "rows": self.rows,
            "eps": float(self.eps),
            "meta_json": json.dumps(self.meta, sort_keys=True),
            "sha256": self.content_hash(),
        }
        atomic_write(Path(path), lambda handle: torch.save(payload, handle))

    @classmethod
    def load(cls, path: str | Path) -> Poison:
        """Read and verify a saved poison; tampered or truncated files raise one clear line."""
        path = Path(path)
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            poison = cls(
                delta=payload["delta"],
                rows=payload["rows"],
                eps=float(payload["eps"]),
                meta=json.loads(payload["meta_json"]),
            )
            expected = payload["sha256"]
        except FileNotFoundError:
            raise UebenchError(f"poison file {path} does not exist") from None
        except Exception as error:
            raise UebenchError(
                f"poison file {path} is corrupt ({type(error).__name__}); delete it to recompute"
            ) from None
        if poison.content_hash() != expected:
            raise UebenchError(
                f"poison file {path} is corrupt (content hash mismatch); delete it to recompute"
            )
        return poison


def atomic_write(path: Path, write: Any, mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
