"""timm models as victims and crafting sources: the architecture spec ``timm:NAME``."""

from __future__ import annotations

import json
import sys

import pytest
from tiny_cli import TINY_CLI

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.identity import plugin_identity
from uebench.registry import ARCHS

# A two-block ViT-Tiny of width 32 on the tiny grid's 8×8 digits: 2×2 patches of 4 px.
VIT = "timm:vit_tiny_patch16_224:img_size=8:patch_size=4:embed_dim=32:depth=1:num_heads=2"


def test_missing_extra_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what an environment without timm sees
    with pytest.raises(UebenchError, match=r'pip install "uebench\[timm\]"'):
        ARCHS.build("timm:resnet18", 10, (3, 32, 32))


def test_options_pass_through_typed():
    options = ARCHS.resolve(f"{VIT}:drop_rate=0.1:class_token=false").options
    assert options["img_size"] == 8 and options["drop_rate"] == 0.1
    assert options["class_token"] is False
    # Option order does not change the identity (cell ids, poison keys).
    reordered = "timm:vit_tiny_patch16_224:depth=1:num_heads=2:embed_dim=32:patch_size=4:img_size=8"
    assert plugin_identity("archs", reordered) == plugin_identity("archs", VIT)


def test_list_says_how(capsys):
    assert main(["list", "archs"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "timm " in line)
    assert "timm:vit_tiny_patch16_224:img_size=32:patch_size=4" in line


def test_vit_trains_one_epoch_as_victim_and_source(tmp_path, capsys):
    pytest.importorskip("timm", reason='timm extra not installed (pip install "uebench[timm]")')
    with pytest.raises(UebenchError, match="img_size=8"):
        ARCHS.build("timm:vit_tiny_patch16_224", 10, (1, 8, 8))
    with pytest.raises(UebenchError, match="has no model"):
        ARCHS.build("timm:no_such_model", 10, (1, 8, 8))
    out = tmp_path / "run"
    methods = f"clean,emax:source=[{VIT}]:steps=2"
    code = main(["run", *TINY_CLI, "--archs", VIT, "--methods", methods, "--defenses", "none",
                 "--out", str(out), "--no-progress", "--threads", "1"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    found = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(found) == 2
    for record in found:
        assert record["arch"] == VIT
        assert len(record["history"]) == 1 and 0 <= record["final_acc"] <= 100
        assert any(p["kind"] == "archs" and p["name"] == "timm" for p in record["plugins"])
