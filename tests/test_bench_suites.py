"""Countermeasure suites as data: the shipped v1, suites of one's own, their content hash (a
changed suite is never the same suite), bad suite files, `uebench list suites`, and the
protocol hash that tells settings apart."""

import pytest

from uebench.benchmark.reference import parse_command
from uebench.cli import main
from uebench.errors import UebenchError
from uebench.grid import GridConfig
from uebench.grid.protocols import resolve_protocol
from uebench.registry import COUNTERMEASURES
from uebench.results.references import available_sources, read_reference_file
from uebench.scoring.suites import describe_suites, load_suite, shipped_suites

V1 = [
    "none",
    "grayscale",
    "jpeg:quality=10",
    "advtrain:eps=8/255",
]


def suite_file(tmp_path, countermeasures, extra="", suite_id="mine-v1", version=1, name=None):
    """A suite file of one suite, ``NAME.toml`` (default: the suite's id)."""
    path = tmp_path / f"{name or suite_id}.toml"
    specs = ", ".join(f'"{spec}"' for spec in countermeasures)
    path.write_text(
        f'[suites.{suite_id}]\nversion = {version}\ndescription = "test"\n'
        f"countermeasures = [{specs}]\n{extra}"
    )
    return path


def test_v1_is_shipped_with_its_countermeasures_in_order():
    suite = load_suite("v1")
    assert list(suite.countermeasures) == V1 and suite.version == 1
    for spec in suite.countermeasures:  # each names a registered countermeasure
        COUNTERMEASURES.resolve(spec)
    assert "v1" in shipped_suites()


def test_the_hash_follows_the_content_not_the_spelling(tmp_path):
    def hashed(countermeasures, name, **kwargs):
        return load_suite(suite_file(tmp_path, countermeasures, name=name, **kwargs))

    base = hashed(["none", "jpeg:quality=10"], "base")
    assert hashed(["none", "jpeg"], "same").content_hash() == base.content_hash()  # default 10
    assert hashed(["none", "jpeg:quality=20"], "other").content_hash() != base.content_hash()
    assert hashed(["jpeg:quality=10", "none"], "order").content_hash() != base.content_hash()
    newer = hashed(["none", "jpeg"], "newer", suite_id="mine-v2", version=2)
    assert newer.content_hash() != base.content_hash()
    assert load_suite(base.origin).content_hash() == base.content_hash()  # stable across reads


def test_overrides_replace_a_countermeasure_under_one_protocol_and_dataset(tmp_path):
    extra = '[suites.mine-v1.overrides.mini.cifar10]\n"jpeg:quality=10" = "jpeg:quality=20"\n'
    suite = load_suite(suite_file(tmp_path, ["none", "jpeg:quality=10"], extra))
    assert suite.runs_for("mini", "cifar10") == [
        ("none", "none"),
        ("jpeg:quality=10", "jpeg:quality=20"),
    ]
    assert suite.runs_for("mini", "svhn")[1] == ("jpeg:quality=10", "jpeg:quality=10")
    plain = load_suite(suite_file(tmp_path, ["none", "jpeg:quality=10"], name="plain"))
    assert plain.content_hash() != suite.content_hash()


@pytest.mark.parametrize(
    ("countermeasures", "extra", "suite_id", "version", "problem"),
    [
        (["none"], "", "mine", 1, "an id ends with its version"),
        (["none"], "", "mine-v2", 1, "the id says version 2, not 1"),
        (["none", "nope"], "", "mine-v1", 1, "nope"),
        (["none", "jpeg:quality=10", "jpeg"], "", "mine-v1", 1, "same countermeasure"),
        (["none"], "colour = 1\n", "mine-v1", 1, "unknown key 'colour'"),
        (["none"], "[suites.mine-v1.overrides.mini.cifar10]\ncutout = 'cutout'\n", "mine-v1", 1,
         "not one of its countermeasures"),
        (["none"], "[suites.mine-v1.overrides.quick.cifar10]\nnone = 'none'\n", "mine-v1", 1,
         "unknown protocol 'quick'"),
    ],
)  # fmt: skip
def test_a_bad_suite_file_is_one_line(tmp_path, countermeasures, extra, suite_id, version, problem):
    path = suite_file(tmp_path, countermeasures, extra, suite_id, version)
    with pytest.raises(UebenchError, match=problem) as caught:
        load_suite(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_suite_names_the_shipped_ones():
    with pytest.raises(UebenchError, match="unknown suite 'v7'; shipped: v1"):
        load_suite("v7")


def test_list_suites(capsys):
    assert main(["list", "suites"]) == 0
    out = capsys.readouterr().out
    assert out == describe_suites() + "\n"
    assert f"v1: version 1, hash {load_suite('v1').content_hash()}" in out
    for spec in V1:
        assert f"\n  {spec}" in out
    assert "under mini on cifar10: advtrain:eps=8/255:steps=2:alpha=4/255" in out


def test_every_shipped_reference_under_a_suite_matches_the_suite_and_protocol_now():
    """A suite edited after numbers under it shipped (or a protocol changed) fails here: the
    edit must be a new version, the numbers measured again."""
    for name, path in available_sources().items():
        for reference in read_reference_file(path):
            if reference.suite:
                suite = load_suite(reference.suite)
                assert reference.suite_hash == suite.content_hash(), (name, reference.id)
            if reference.protocol_hash and reference.command:
                config = parse_command(reference.command)
                assert config.effective_protocol().content_hash() == reference.protocol_hash


def test_the_protocol_hash_follows_the_settings_the_cells_run_with():
    mini = resolve_protocol("mini", "cifar10")
    plain = GridConfig(dataset="cifar10", protocol="mini").effective_protocol()
    assert plain.content_hash() == mini.content_hash()
    same = GridConfig(dataset="cifar10", protocol="mini", epochs=mini.epochs).effective_protocol()
    assert same.content_hash() == mini.content_hash()  # an explicit value equal to the protocol's
    other = GridConfig(dataset="cifar10", protocol="mini", epochs=3).effective_protocol()
    assert other.content_hash() != mini.content_hash()
    assert resolve_protocol("mini", "svhn").content_hash() != mini.content_hash()
    assert resolve_protocol("paper", "cifar10").content_hash() != mini.content_hash()
