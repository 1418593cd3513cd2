"""The spec grammar and the registries: parsing, typed options, and one-line errors."""

import pytest

from uebench.errors import UebenchError
from uebench.registry import ARCHS, DATASETS, DEFENSES, METHODS, Registry
from uebench.spec import parse_float, parse_spec, split_list


def test_parse_spec_options_and_positional():
    spec = parse_spec("random:form=class:eps=16/255")
    assert spec.name == "random" and spec.options == {"form": "class", "eps": "16/255"}
    assert parse_spec("npz:data/x.npz").positional == "data/x.npz"
    assert str(parse_spec("emin:form=class")) == "emin:form=class"
    nested = parse_spec("emin:source=[resnet18:width=16]:eps=16/255")
    assert nested.options == {"source": "resnet18:width=16", "eps": "16/255"}
    with pytest.raises(UebenchError, match="unbalanced"):
        parse_spec("emin:source=[resnet18")


def test_split_list_keeps_numeric_lists_together():
    assert split_list("clean,emin,emin:form=class,random:form=class:eps=16/255") == [
        "clean",
        "emin",
        "emin:form=class",
        "random:form=class:eps=16/255",
    ]
    assert split_list("emin:classes=0,1,8,9,random") == ["emin:classes=0,1,8,9", "random"]
    assert split_list(["a,b", "c"]) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("clean,", "after the last comma"),
        (",clean", "before the first comma"),
        ("clean, ,random", "between two commas"),
        ("rem:source=[airbench:width=16],", "after the last comma"),
        (["clean", ""], "an empty item"),
    ],
)
def test_split_list_refuses_an_empty_item_anywhere(text, where):
    with pytest.raises(UebenchError, match=where):
        split_list(text)


def test_split_list_still_reads_nested_brackets_and_blank_lists():
    assert split_list("rem:source=[airbench:width=16],clean") == [
        "rem:source=[airbench:width=16]",
        "clean",
    ]
    assert split_list("emin:classes=[bird,ship], random") == ["emin:classes=[bird,ship]", "random"]
    assert split_list("") == [] and split_list(" ") == []  # the caller names the empty list


def test_fractions_parse():
    assert parse_float("8/255") == pytest.approx(8 / 255)
    with pytest.raises(UebenchError):
        parse_float("8/0")


def test_builtins_are_registered_through_entry_points():
    assert {"clean", "random", "emin", "emax", "emin-lbfgs"} <= set(METHODS.names())
    assert "none" in DEFENSES.names()
    assert {"resnet18", "resnet50", "vgg11", "densenet121"} <= set(ARCHS.names())
    assert {"digits", "cifar10", "cifar100", "svhn", "imagenet-subset", "folder", "npz"} <= set(
        DATASETS.names()
    )


def test_options_are_typed_and_defaults_filled():
    resolved = METHODS.resolve("random:form=class:eps=16/255")
    assert resolved.options == {"form": "class", "eps": pytest.approx(16 / 255), "seed": 0}
    assert METHODS.resolve("emin").canonical() == METHODS.resolve("emin:form=sample").canonical()
    assert ARCHS.resolve("resnet18:width=16").options["width"] == 16


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("nosuch", "valid: ar, clean, cuda, emax, emin, emin-lbfgs, emin-patch, file, lsp"),
        ("emin:colour=red", "has no option 'colour'; valid: form, eps"),
        ("emin:form=pixel", "'pixel' is not one of sample, class"),
        ("emin:steps=many", "'many' is not an integer"),
        ("random:eps=300", "eps must be in (0, 1]"),
        ("emin:eps=2/0", "not a number"),
    ],
)
def test_bad_specs_fail_with_one_line(spec, fragment):
    with pytest.raises(UebenchError) as caught:
        METHODS.build(spec)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_third_party_registration_is_first_class():
    registry = Registry("uebench.test-only", "widget")

    def widget(size: int, *, colour: str = "red", count: int = 1):
        return (size, colour, count)

    registry.register("widget", widget)
    assert registry.build("widget:blue:count=3", 5) == (5, "blue", 3)
    with pytest.raises(UebenchError, match="valid: widget"):
        registry.get("gadget")
