"""Reference files: the shipped sources, validation errors, matching and judging."""

import re
from pathlib import Path

import pytest
from test_leaderboard import write_cell

from uebench.cli import main
from uebench.errors import UebenchError
from uebench.registry import DEFENSES, METHODS
from uebench.results.leaderboard import cells_frame, read_records
from uebench.results.references import (
    Reference,
    Verdict,
    available_sources,
    compare,
    judge,
    load_references,
    match_cells,
    read_reference_file,
    resolve_source,
)
from uebench.spec import parse_spec

PAPER = (
    Path(__file__).resolve().parents[2] / "shared" / "papers" / "unlearnable-examples-huang2021.txt"
)
HEADER = "id,dataset,method,defense,arch,value,tolerance"


def by_id(source):
    return {r.id: r for r in load_references(source)}


def test_shipped_sources_load():
    assert {"huang2021", "apbench", "iss2023", "uebench-mini"} <= set(available_sources())
    huang = by_id("huang2021")
    assert len(huang) == 110
    assert all(r.where and r.marks == ("slow", "gpu") for r in huang.values())
    ref = huang["t1-s-resnet18-cifar10-ue"]
    assert (ref.value, ref.method, ref.arch, ref.dataset, ref.epochs) == (
        19.93,
        "emin",
        "resnet18",
        "cifar10",
        60,
    )
    assert ref.cited() == "Table 1, row Δs RN-18, column CIFAR-10 Du"
    assert huang["t1-c-resnet18-cifar10-ue"].method == "emin:form=class"
    assert huang["t2-c-80-clean-part"].metric == "clean_part_acc"
    assert huang["t2-c-80-clean-part"].defense == "partial:rate=0.8"
    assert huang["t3-s-mixup"].value == 58.51
    assert huang["f1-emin-c-below-23"].relation == "max"
    apbench = by_id("apbench")
    assert {r.defense: r.value for r in apbench.values()} == {
        "none": 20.78,
        "cutout": 18.79,
        "cutmix": 22.28,
        "mixup": 31.14,
        "jpeg": 80.72,
        "grayscale": 92.03,
        "advtrain": 82.51,
    }


#: The method and countermeasure names of issue 12's spec, the names reference rows of the
#: field's sources (ISS, APBench) may use.
SPEC_METHODS = {"clean", "emin", "rem", "tap", "ops", "ar", "lsp", "cuda", "emax", "random"}
SPEC_DEFENSES = {"none", "grayscale", "jpeg", "bdr", "blur", "advtrain", "cutout", "cutmix"}
SPEC_DEFENSES |= {"mixup", "ueraser", "orthoproj"}


def test_iss2023_is_the_readme_table_with_tolerances_that_can_fail():
    iss = by_id("iss2023")
    assert len(iss) == 21  # 7 rows (clean and the 6 attacks uebench has) x 3 columns
    for r in iss.values():
        assert r.where.startswith("ISS README") and r.note and r.protocol and r.epochs == 60
        assert (r.dataset, r.arch, r.marks) == ("cifar10", "resnet18", ("slow", "gpu"))
    assert (iss["tap-none"].value, iss["ar-jpeg10"].value, iss["ops-gray"].value) == (
        8.17,
        85.15,
        42.44,
    )
    assert iss["em-jpeg10"].defense == "jpeg:quality=10" and iss["em-jpeg10"].method == "emin"
    # Where an attack works (reported below 60%), its accepted range must end below the clean
    # model's accepted range under the same countermeasure: noise that does nothing fails.
    clean = {r.defense: r for r in iss.values() if r.method == "clean"}
    for r in iss.values():
        if r.method != "clean" and r.value < 60:
            floor = clean[r.defense].value - clean[r.defense].tolerance
            assert r.value + r.tolerance < floor, r.name


@pytest.mark.parametrize("source", ["iss2023", "apbench"])
def test_field_sources_name_registered_methods_and_countermeasures(source):
    """Every row names a method and countermeasure of the spec, installed as a plugin that
    accepts the row's options (fails while the issue-12 plugins are not registered)."""
    for reference in load_references(source):
        method = parse_spec(reference.method).name
        defenses = [parse_spec(part).name for part in reference.defense.split("+")]
        assert method in SPEC_METHODS and set(defenses) <= SPEC_DEFENSES, reference.name
        assert method in METHODS.names(), f"{reference.name}: method {method!r} not registered"
        for name in defenses:
            assert name in DEFENSES.names(), f"{reference.name}: {name!r} not registered"
        METHODS.resolve(reference.method)
        for part in reference.defense.split("+"):
            DEFENSES.resolve(part)


def test_mini_references_carry_their_command_and_run_in_ci():
    references = load_references("uebench-mini")
    for ref in references:
        assert ref.command.startswith("uebench run ")
        assert ref.std is not None and ref.n >= 3  # the measured seed spread behind the tolerance
    # Every noise row runs by default; the clean row may be slow, since the headline test
    # already checks clean training on the same dataset and protocol in every CI run.
    assert all(not ref.marks for ref in references if ref.method != "clean")
    assert any(ref.method != "clean" for ref in references)


@pytest.mark.skipif(not PAPER.exists(), reason="the paper text is not on this machine")
def test_huang2021_tables_match_the_paper_text():
    """Every table number in huang2021.csv against the paper's text, in table order."""
    lines = PAPER.read_text().splitlines()
    huang = by_id("huang2021")

    def numbers(line):
        return [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+", line)]

    table1 = [line for line in lines if re.search(r"(^|\} )(VGG-11|RN-18|RN-50|DN-121) \d", line)]
    order = [(f, a) for f in "sc" for a in ("vgg11", "resnet18", "resnet50", "densenet121")]
    assert len(table1) == 8
    for (form, arch), line in zip(order, table1, strict=True):
        got = []
        for dataset in ("svhn", "cifar10", "cifar100", "imagenet-subset"):
            got += [huang[f"t1-{form}-{arch}-{dataset}-{k}"].value for k in ("clean", "ue")]
        assert got == numbers(line)
    table2 = numbers(next(line for line in lines if line.startswith("Noise Type Percentage")))
    for form, values in (("s", table2[:10]), ("c", table2[10:])):
        got = [huang[f"t2-{form}-0"].value]
        for rate in (20, 40, 60, 80):
            got += [
                huang[f"t2-{form}-{rate}-mix"].value,
                huang[f"t2-{form}-{rate}-clean-part"].value,
            ]
        assert [*got, huang[f"t2-{form}-100"].value] == values
    start = next(i for i, line in enumerate(lines) if line.startswith("Noise Cutout Mixup"))
    for form, line in (("s", lines[start + 1]), ("c", lines[start + 2])):
        defenses = ("cutout", "mixup", "cutmix", "autoaugment")
        assert [huang[f"t3-{form}-{d}"].value for d in defenses] == numbers(line)
    keys = ["patch8", "patch16", "patch24", "patch32", "mix-c1-or-c2", "mix-c1-plus-u"]
    for prefix, key in (("Standard Training ", "standard"), ("Fast Autoaugment ", "fa")):
        line = next(line for line in lines if line.startswith(prefix))
        assert [huang[f"t5-{k}-{key}"].value for k in keys] == numbers(line)


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        (
            "a.csv",
            "id,dataset,method,arch,value\nx,d,m,a,1\n",
            "line 2 (id x): missing 'tolerance'",
        ),
        ("a.csv", HEADER + "\nx,d,m,none,a,abc,1\n", "line 2 (id x): value 'abc' is not a number"),
        ("a.csv", HEADER + "\nx,d,m,none,a,1,-1\n", "tolerance must be >= 0"),
        ("a.csv", HEADER + ",relation\nx,d,m,none,a,1,1,about\n", "relation 'about' is not one"),
        ("a.csv", HEADER + ",marks\nx,d,m,none,a,1,1,fast\n", "mark 'fast' is not one of"),
        ("a.csv", HEADER + ",tolerence\nx,d,m,none,a,1,1,2\n", "unknown field 'tolerence'"),
        (
            "a.csv",
            HEADER + "\nx,d,m,none,a,1,1\nx,d,m,none,a,2,1\n",
            "line 3: id 'x' is used twice",
        ),
        ("a.csv", HEADER + ",epochs\nx,d,m,none,a,1,1,ten\n", "epochs 'ten' is not an integer"),
        ("a.csv", HEADER + "\nx,d,9m,none,a,1,1\n", "method: bad spec"),
        (
            "a.csv",
            HEADER + ",command\nx,d,m,none,a,1,1,python run.py\n",
            "must start with 'uebench run'",
        ),
        ("a.csv", HEADER + "\n", "has no records"),
        ("a.csv", "", "is not valid CSV"),
        ("a.yaml", "records: [{id: x\n", "is not valid yaml"),
        ("a.yaml", "just: text\n", "must hold a list of records"),
        ("a.yaml", "- 3\n", "record 1: must be a mapping"),
        ("a.toml", "records = [\n", "is not valid toml"),
        ("a.txt", "x", "must end in"),
    ],
)
def test_malformed_reference_file_is_one_clear_line(tmp_path, capsys, name, text, problem):
    path = write(tmp_path / name, text)
    with pytest.raises(UebenchError, match=re.escape(problem)) as error:
        read_reference_file(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    if path.suffix != ".txt":
        run = tmp_path / "run" / "cells"
        run.mkdir(parents=True)
        assert main(["compare", str(run.parent), "--reference", str(path)]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_yaml_and_toml_with_file_level_defaults(tmp_path):
    yaml_file = write(
        tmp_path / "mine.yaml",
        "source: mypaper\nwhere: Table 9\ntolerance: 2\nrecords:\n"
        "  - {id: a, dataset: cifar10, method: emin, arch: resnet18, value: 12.5}\n"
        "  - {id: b, dataset: cifar10, method: clean, arch: resnet18, value: 94, tolerance: 1}\n",
    )
    a, b = read_reference_file(yaml_file)
    assert (a.source, a.where, a.tolerance, a.defense, a.metric) == (
        "mypaper",
        "Table 9",
        2.0,
        "none",
        "final_acc",
    )
    assert b.tolerance == 1.0 and b.name == "mypaper/b"
    toml_file = write(
        tmp_path / "other.toml",
        'where = "Figure 2"\nmarks = "slow"\n[[records]]\nid = "x"\ndataset = "svhn"\n'
        'method = "emin"\narch = "vgg11"\nvalue = 35.91\ntolerance = 5\nrelation = "max"\n',
    )
    (x,) = read_reference_file(toml_file)
    assert (x.source, x.marks, x.relation, x.value) == ("other", ("slow",), "max", 35.91)


def test_resolve_source(tmp_path, monkeypatch):
    assert resolve_source("huang2021").name == "huang2021.csv"
    path = write(tmp_path / "mine.csv", HEADER + "\nx,d,m,none,a,1,1\n")
    assert resolve_source(str(path)) == path
    with pytest.raises(
        UebenchError, match=r"unknown reference source 'nope'; available: .*huang2021"
    ):
        resolve_source("nope")
    with pytest.raises(UebenchError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.csv"))
    monkeypatch.setenv("UEBENCH_REFERENCES", str(tmp_path))
    assert resolve_source("mine") == path
    with pytest.raises(UebenchError, match="defined in both"):
        load_references(path, "mine")


def ref(**fields):
    defaults = dict(
        id="r", source="s", dataset="cluttered-digits", method="emin", arch="smallcnn", value=20.0
    )
    return Reference(**{**defaults, "tolerance": 5.0, **fields})


@pytest.mark.parametrize(
    ("relation", "measured", "ok"),
    [
        ("approx", 25.0, True),
        ("approx", 15.0, True),
        ("approx", 25.01, False),
        ("approx", 14.9, False),
        ("max", 0.0, True),
        ("max", 25.0, True),
        ("max", 25.5, False),
        ("min", 15.0, True),
        ("min", 99.0, True),
        ("min", 14.5, False),
    ],
)
def test_judge_relations(relation, measured, ok):
    verdict = judge(ref(relation=relation), [measured])
    assert verdict.ok is ok
    assert verdict.status == ("ok" if ok else "MISMATCH")
    assert verdict.diff == pytest.approx(measured - 20.0)


def test_judge_uses_the_mean_over_seeds_and_says_so():
    verdict = judge(ref(), [10.0, 20.0, 40.0])  # mean 23.33 inside 20 ± 5
    assert verdict.ok and verdict.n == 3 and verdict.measured == pytest.approx(70 / 3)
    assert "measured 23.33 ± 15.28 (n=3), expected 20.00 ± 5.00" in verdict.message()
    empty = judge(ref(), [])
    assert empty.ok is None and empty.status == "not measured"
    assert isinstance(empty, Verdict) and "not measured" in empty.message()


def test_matching_is_by_canonical_spec_epochs_and_metric(tmp_path):
    run = tmp_path / "run"
    write_cell(run, "emin:form=sample", "none", 0, 18.0)
    write_cell(run, "emin", "none", 1, 22.0)
    write_cell(run, "emin", "none", 0, 90.0, epochs=3)
    write_cell(run, "emin:form=class", "none", 0, 11.0)
    write_cell(run, "emin", "partial:rate=0.5", 0, 80.0, notes={"rate": 0.5, "clean_part_acc": 75})
    cells = cells_frame(read_records([run]))
    assert len(match_cells(ref(), cells)) == 3  # every emin:form=sample cell with no defense
    assert sorted(match_cells(ref(epochs=10), cells)["final_acc"]) == [18.0, 22.0]
    assert list(match_cells(ref(method="emin:form=class"), cells)["final_acc"]) == [11.0]
    part = ref(defense="partial:rate=0.5", metric="clean_part_acc")
    assert list(match_cells(part, cells)["clean_part_acc"]) == [75.0]
    assert match_cells(ref(dataset="cifar10"), cells).empty
    table = compare(
        [ref(epochs=10), ref(id="far", epochs=10, value=50.0), ref(id="x", arch="vgg11")], cells
    )
    assert list(table["status"]) == ["ok", "MISMATCH", "not measured"]
    assert table["diff"].iloc[1] == pytest.approx(-30.0)


def test_cli_compare(tmp_path, capsys):
    run = tmp_path / "run"
    write_cell(run, "emin", "none", 0, 21.0)
    references = write(
        tmp_path / "r.csv",
        HEADER + "\nnear,cluttered-digits,emin,none,smallcnn,20,5\n"
        "far,cluttered-digits,emin,none,smallcnn,60,5\nother,cifar10,emin,none,resnet18,20,5\n",
    )
    assert main(["compare", str(run), "-r", str(references), "-o", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "r/near" in out and "r/far" in out and "r/other" not in out
    assert "2 of 3 references measured; 1 outside their tolerance" in out
    with pytest.raises(SystemExit) as exit_status:
        main(["compare", str(run), "-r", str(references), "--check"])
    assert exit_status.value.code == 1
    assert main(["compare", str(run), "-r", str(references), "--all"]) == 0
    assert "not measured" in capsys.readouterr().out
    assert main(["compare", str(run), "-r", "huang2021"]) == 0
    assert "no measured cell matches any of the 110 references" in capsys.readouterr().out
    assert (tmp_path / "c.csv").read_text().startswith("reference,cited,")
