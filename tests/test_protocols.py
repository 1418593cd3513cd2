"""Named protocols: resolution, override order, what records keep, and unchanged paper cell ids."""

import json

import pytest

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid
from uebench.grid.protocols import default_protocol, protocol_names, resolve_protocol

# Cell ids computed by the code before protocols existed (commit 827c786) for paper-protocol
# grids: a user's old runs must keep resuming, so these may never change.
OLD_PAPER_CELL_IDS = {
    ("cifar10", "clean", "none", "resnet18", 0): "3d600c6731a2ac33",
    ("cifar10", "emin", "none", "resnet18", 0): "25f57886c51b166c",
    ("cifar10", "emin:form=class", "cutmix", "resnet18", 0): "26752b693e5665ce",
    ("cifar10", "emax", "advtrain", "resnet18", 1): "d490d94c555d4abb",
    ("cifar10", "random", "advtrain", "vgg11", 1): "a689fc209a9c358d",
    ("svhn", "emin:form=class", "none", "resnet18", 1): "ba0d6e80a031c847",
    ("cifar100", "emin", "none", "resnet18", 0): "78ebc74b2f027f67",
}


def test_paper_protocol_keeps_the_cell_ids_of_old_runs():
    for (dataset, method, defense, arch, seed), old_id in OLD_PAPER_CELL_IDS.items():
        for protocol in (None, "paper"):  # the datasets' default is paper, and so is asking
            (cell,) = GridConfig(
                dataset=dataset,
                methods=[method],
                defenses=[defense],
                archs=[arch],
                seeds=[seed],
                protocol=protocol,
            ).cells()
            assert cell.cell_id == old_id, (dataset, method, defense, arch, seed, protocol)


def test_each_dataset_names_its_default_protocol():
    assert default_protocol("cluttered-digits") == "mini"
    assert default_protocol("cluttered-digits:contrast=0.4") == "mini"
    assert default_protocol("cifar10") == "paper"
    assert default_protocol("npz:any.npz") == "paper"  # undeclared datasets: the paper's
    assert {"mini", "paper"} <= set(protocol_names())


def test_paper_values_follow_appendix_b():
    cifar = resolve_protocol("paper", "cifar10")
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.archs) == (
        60,
        128,
        0.025,
        ("resnet18",),
    )
    assert resolve_protocol("paper", "cifar100").epochs == 100
    assert resolve_protocol("paper", "svhn").epochs == 30
    assert cifar.method_options == {} and cifar.defenses == {}  # every plugin's paper defaults


def test_protocol_fills_what_specs_leave_unset_and_specs_win():
    mini = resolve_protocol("mini", "cluttered-digits")
    source = mini.method_options["source"]
    assert mini.method_spec("emin") == (
        f"emin:source=[{source}]:augment=true:steps=5:stop_error=0.1:max_rounds=10:alpha=2/255"
        ":lr=0.01"
    )
    # The dataset's own section refines the "*" one: CIFAR-10 swaps the victim and source for
    # the CPU-sized airbench and its recipe, and keeps the "*" crafting options.
    cifar = resolve_protocol("mini", "cifar10")
    assert cifar.method_spec("emin").startswith("emin:source=[airbench:width=16]:augment=true")
    assert "steps=5" in cifar.method_spec("emin")
    assert cifar.archs == ("airbench:width=16",) and cifar.train["lookahead"] is True
    assert cifar.defense_spec("advtrain") == "advtrain:steps=2:alpha=4/255"
    # Any other dataset still gets the "*" ResNet victim.
    other = resolve_protocol("mini", "svhn")
    assert other.archs == ("resnet18:width=8",) and other.train == {}
    # An option written in the spec wins, and a positional first option counts as written.
    assert "source=[vgg11]" in mini.method_spec("emin:source=[vgg11]")
    assert mini.method_spec("emin:source=[vgg11]").count("source=") == 1
    assert mini.method_spec("emin:steps=2").count("steps=") == 1
    # An entry keyed by a spec applies only where its options hold (form=sample is emin's
    # default): class-wise emin keeps the paper's T=1.
    assert "steps=5" in mini.method_spec("emin:form=sample")
    assert "steps" not in mini.method_spec("emin:form=class")
    # Options a plugin does not have are not forced on it.
    assert mini.method_spec("random") == "random"
    assert mini.method_spec("clean") == "clean"
    assert mini.defense_spec("advtrain") == "advtrain:steps=2:alpha=4/255"
    assert mini.defense_spec("cutmix+advtrain:steps=7").endswith("advtrain:steps=7:alpha=4/255")


def test_flags_override_the_protocol():
    config = GridConfig(methods=["clean"], protocol="mini")
    (cell,) = config.cells()
    mini = resolve_protocol("mini", "cluttered-digits")
    assert cell.train.epochs == mini.epochs and cell.arch == mini.archs[0]
    (cell,) = GridConfig(
        methods=["clean"], protocol="mini", epochs=3, lr=0.1, batch_size=64, archs=["smallcnn"]
    ).cells()
    assert (cell.train.epochs, cell.train.lr, cell.train.batch_size) == (3, 0.1, 64)
    assert cell.arch == "smallcnn"
    # A config file's values sit between the protocol and the flags: from_dict takes both.
    (cell,) = GridConfig.from_dict({"methods": "clean", "protocol": "paper", "epochs": 2}).cells()
    assert cell.train.epochs == 2 and cell.arch == "resnet18"


def test_unknown_protocol_lists_the_valid_ones(capsys):
    with pytest.raises(UebenchError, match=r"unknown protocol 'tiny'; valid: .*mini.*paper"):
        GridConfig(protocol="tiny").cells()
    assert main(["run", "--protocol", "tiny", "--methods", "clean"]) == 2
    assert "unknown protocol 'tiny'; valid: fast, mini, paper" in capsys.readouterr().err


def test_list_protocols_shows_every_value(capsys):
    assert main(["list", "protocols"]) == 0
    out = capsys.readouterr().out
    for text in ("mini:", "paper:", "cifar10:", "epochs", "batch_size", "lr", "archs"):
        assert text in out
    assert "emin:form=sample:steps=5:stop_error=0.1:max_rounds=20" in out
    assert "the default protocol of: cluttered-digits\n" in out


def test_two_spellings_of_one_cell_run_once_under_the_first(tmp_path, tiny_grid):
    said = []
    config = GridConfig(
        methods=["clean", "clean", "random", "random:form=sample", "random:eps=8/255"],
        out=str(tmp_path / "g"),
        **tiny_grid,
    )
    cells = config.cells(report=said.append)
    assert [cell.method_label for cell in cells] == ["clean", "random"]
    assert len(said) == 3 and "random:form=sample" in said[1]
    table = run_grid(config)
    assert sorted(table["method"]) == ["clean", "random"]


def test_record_keeps_protocol_and_resolved_specs(tmp_path, tiny_grid):
    run_grid(
        GridConfig(
            methods=["emin:form=class:max_rounds=1"],
            protocol="mini",
            out=str(tmp_path / "g"),
            **{**tiny_grid, "archs": ["smallcnn:width=4"]},
        )
    )
    record = json.loads(next((tmp_path / "g" / "cells").glob("*.json")).read_text())
    assert record["protocol"] == "mini"
    assert record["method"] == "emin:form=class:max_rounds=1"  # as written
    assert "source=[resnet18:width=8]" in record["method_spec"]  # as run
    assert "augment=true" in record["method_spec"]
    assert record["protocol_values"]["name"] == "mini"
    assert record["protocol_values"]["method_options"]["augment"] is True
    assert record["num_classes"] == 10
    assert record["epochs"] == 1  # the flag beat the protocol's 12


def test_bad_protocol_data_is_an_error(monkeypatch):
    import uebench.grid.protocols as protocols

    table = {"protocols": {"x": {"*": {"epoch": 3}}}, "default_protocol": {}}
    monkeypatch.setattr(protocols, "_table", lambda: table)
    with pytest.raises(UebenchError, match="unknown key 'epoch'"):
        resolve_protocol("x", "cifar10")
