"""The pytest plugin: a reference that matches passes, one that does not fails, marks and modes."""

import textwrap

import pytest
from test_leaderboard import write_cell

from uebench.errors import UebenchError
from uebench.results.references import Reference
from uebench.results.regression import grid_config

pytest_plugins = ["pytester"]

HEADER = "id,dataset,method,defense,arch,value,tolerance,relation,marks"
#: A cell that trains in about a second (the runner tests' tiny setting).
TINY = (
    "uebench run --dataset digits:size=8 --methods clean,random:form=class --archs "
    "smallcnn:width=4 --epochs 1 --train-size 200 --test-size 100 --seeds 0 --device cpu"
)


@pytest.fixture(scope="module", autouse=True)
def imported(tmp_path_factory):
    """Run the tiny grid once in this process: pytester's in-process runs drop the modules they
    import first, and some extension modules (numpy.fft) cannot be imported twice."""
    from uebench.cli import main

    assert (
        main([*TINY.split()[1:], "--out", str(tmp_path_factory.mktemp("warm")), "--no-progress"])
        == 0
    )


@pytest.fixture
def results(tmp_path):
    run = tmp_path / "results"
    for seed, acc in enumerate([18.0, 22.0]):
        write_cell(run, "emin", "none", seed, acc)
    write_cell(run, "clean", "none", 0, 90.0)
    return run


def references(pytester, rows, header=HEADER):
    return pytester.makefile(".csv", refs=header + "\n" + "\n".join(rows) + "\n")


def test_results_mode_match_passes_and_mismatch_fails(pytester, results):
    refs = references(
        pytester,
        [
            "match,cluttered-digits,emin,none,smallcnn,21,2,approx,",
            "drifted,cluttered-digits,emin,none,smallcnn,30,5,approx,",
            "bound,cluttered-digits,emin:form=sample,none,smallcnn,23,0,max,slow gpu",
            "absent,cluttered-digits,emin,cutout,smallcnn,20,5,approx,",
        ],
    )
    outcome = pytester.runpytest(
        "-p", "uebench.regression", "-rs", "--uebench-results", str(results), refs
    )
    outcome.assert_outcomes(passed=2, failed=1, skipped=1)
    outcome.stdout.fnmatch_lines(
        [
            "*refs/drifted (cluttered-digits emin / none / smallcnn, final_acc): measured 20.00 "
            "± 2.83 (n=2), expected 30.00 ± 5.00*MISMATCH*",
            "*SKIPPED*refs/absent: no matching cell in*",
        ]
    )


def test_run_mode_runs_the_cell_and_judges_it(pytester):
    refs = references(
        pytester,
        [
            f'wide,digits:size=8,clean,none,smallcnn:width=4,50,50,approx,,"{TINY}"',
            f'impossible,digits:size=8,clean,none,smallcnn:width=4,101,0,min,,"{TINY}"',
        ],
        header=HEADER + ",command",
    )
    outcome = pytester.runpytest("-p", "uebench.regression", refs)
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(["*refs/impossible*measured * (n=1), expected >= 101.00*"])


def test_slow_and_gpu_marks_apply_only_when_a_cell_would_run(pytester, results):
    refs = references(
        pytester,
        [
            "paper,cluttered-digits,emin,none,smallcnn,20,5,approx,slow gpu",
            "mini,cluttered-digits,emin,none,smallcnn,20,5,approx,",
        ],
    )
    deselect = ("-p", "uebench.regression", "-m", "not slow and not gpu", "--co")
    # Running cells: the slow one is deselected, as the project's default addopts do.
    pytester.runpytest(*deselect, refs).stdout.fnmatch_lines(
        ["*1/2 tests collected (1 deselected)*"]
    )
    # Reading measured results is cheap: nothing is deselected.
    read = pytester.runpytest(*deselect, "--uebench-results", str(results), refs)
    read.stdout.fnmatch_lines(["*2 tests collected*"])
    assert "deselected" not in read.stdout.str()


def test_parametrized_cases_with_the_fixture(pytester, results):
    refs = references(
        pytester,
        [
            "good,cluttered-digits,emin,none,smallcnn,20,1,approx,",
            "bad,cluttered-digits,clean,none,smallcnn,50,10,approx,",
        ],
    )
    pytester.makepyfile(
        test_mine=textwrap.dedent(
            f"""
            import pytest
            from uebench.regression import reference_params

            @pytest.mark.parametrize("reference", reference_params({str(refs)!r}))
            def test_reported(reference, uebench_check):
                verdict = uebench_check(reference)
                assert verdict.n >= 1
            """
        )
    )
    outcome = pytester.runpytest("-p", "uebench.regression", "--uebench-results", str(results))
    outcome.assert_outcomes(passed=1, failed=1)
    outcome.stdout.fnmatch_lines(["*test_reported?refs/bad?*", "*measured 90.00 (n=1)*"])


def test_reference_files_are_collected_only_when_named(pytester):
    references(pytester, ["x,cluttered-digits,emin,none,smallcnn,20,5,approx,"])
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    outcome = pytester.runpytest("-p", "uebench.regression")
    outcome.assert_outcomes(passed=1)  # refs.csv in the folder is left alone


def test_malformed_reference_file_is_a_collection_error(pytester):
    refs = pytester.makefile(".csv", refs="id,dataset\nx,d\n")
    outcome = pytester.runpytest("-p", "uebench.regression", refs)
    outcome.assert_outcomes(errors=1)
    outcome.stdout.fnmatch_lines(["*refs.csv line 2 (id x): missing 'method'*"])


def reference(**fields):
    base = dict(
        id="r", source="s", dataset="digits:size=8", method="clean", arch="smallcnn:width=4"
    )
    return Reference(**{**base, "value": 50.0, "tolerance": 50.0, "command": TINY, **fields})


def test_grid_config_restricts_the_command_to_the_reference_cell():
    config = grid_config(reference(method="random:form=class"))
    assert config.methods == ["random:form=class"] and config.archs == ["smallcnn:width=4"]
    assert (config.epochs, config.train_size, config.seeds, config.progress) == (1, 200, [0], False)
    with pytest.raises(UebenchError, match="method 'emin' is not in its command"):
        grid_config(reference(method="emin"))
    with pytest.raises(UebenchError, match="differs from its command"):
        grid_config(reference(dataset="digits"))
    with pytest.raises(UebenchError, match="not a valid uebench command"):
        grid_config(reference(command="uebench run --no-such-flag 3"))
    paper = grid_config(reference(command="", dataset="cifar10", epochs=60), data_root="/data")
    assert (paper.dataset, paper.epochs, paper.seeds, paper.data_root) == (
        "cifar10",
        60,
        [0],
        "/data",
    )
