"""The code version each record cites: package version, git commit, torch version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

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
