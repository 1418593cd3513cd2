"""Certified (q, η)-learnability: the order-statistic bound, the smoothed evaluations, the CLI."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from tiny_cli import one_line_error

from uebench.analysis.certify import (
    Certificate,
    certified_index,
    certify_accuracies,
    certify_model,
    plot_certificates,
    smoothed_accuracies,
)
from uebench.cli import main
from uebench.errors import UebenchError
from uebench.grid import GridConfig, run_grid

# ---------------------------------------------------------------------------------------------
# The bound


def _direct_index(n, q, eta, sigma, alpha):
    """k* from the distribution of order statistics: the k-th smallest of n uniforms is
    Beta(k, n−k+1), so P(a(k) ≥ q̄-quantile) = P(U(k) ≥ q̄) = beta.sf(q̄, k, n−k+1)."""
    q_bar = norm.cdf(norm.ppf(q) + eta / sigma)
    for k in range(1, n + 1):
        if k >= q_bar * n and beta.sf(q_bar, k, n - k + 1) > 1 - alpha:
            return k
    return None


@pytest.mark.parametrize("n", [5, 20, 60, 200])
@pytest.mark.parametrize("q", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_order_statistic_matches_a_direct_scipy_computation(n, q, alpha):
    for eta in [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5]:
        assert certified_index(n, q, eta, 0.25, alpha) == _direct_index(n, q, eta, 0.25, alpha)


def test_the_bound_covers_the_smoothed_quantile_with_probability_one_minus_alpha():
    # Accuracies ~ Uniform(0, 1): the q̄-quantile is q̄ itself, so a(k*) must be ≥ q̄ in at
    # least 1−α of repeated experiments.
    n, q, eta, sigma, alpha = 40, 0.5, 0.05, 0.25, 0.1
    k = certified_index(n, q, eta, sigma, alpha)
    assert k is not None
    q_bar = norm.cdf(norm.ppf(q) + eta / sigma)
    rng = np.random.default_rng(0)
    samples = np.sort(rng.random((20000, n)), axis=1)
    coverage = float((samples[:, k - 1] >= q_bar).mean())
    assert coverage >= 1 - alpha - 0.006  # 3 standard errors below 1−α at most
    # ... and k* is the smallest such index: one lower would not be confident enough.
    if k - 1 >= math.ceil(q_bar * n):
        assert float((samples[:, k - 2] >= q_bar).mean()) < 1 - alpha + 0.006


def test_abstains_exactly_where_no_order_statistic_is_confident():
    n, q, sigma, alpha = 1000, 0.9, 0.25, 0.01
    # Even a(N) is confident only while 1 − q̄^N > 1 − α, i.e. q̄ < α^(1/N).
    limit = sigma * (norm.ppf(alpha ** (1 / n)) - norm.ppf(q))
    assert certified_index(n, q, limit * 0.999, sigma, alpha) == n
    assert certified_index(n, q, limit * 1.001, sigma, alpha) is None
    # Too few draws to certify anything at q = 0.9 with α = 0.01 (needs q̄^N < 0.01).
    assert all(certified_index(10, q, eta, sigma, alpha) is None for eta in (0.0, 0.1, 1.0))


def test_certified_value_is_monotone_in_eta_and_abstains_only_at_the_end():
    accuracies = torch.rand(500, generator=torch.Generator().manual_seed(3)).mul(100).tolist()
    etas = [0.0, 0.001, 0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 1.0, 2.0]
    rows = certify_accuracies(accuracies, q=0.8, sigma=0.25, alpha=0.01, etas=etas)
    values = [row.certified_acc for row in rows]
    certified = [v for v in values if v is not None]
    assert certified == sorted(certified) and len(certified) >= 5
    assert values[: len(certified)] == certified  # abstentions form a suffix
    assert values[-1] is None
    ordered = sorted(accuracies)
    for row in rows:
        if row.k is not None:
            assert row.certified_acc == ordered[row.k - 1]
            assert row.q_bar >= 0.8


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"q": 1.0}, "q must be in"),
        ({"sigma": 0.0}, "sigma must be positive"),
        ({"alpha": 0.0}, "alpha must be in"),
        ({"etas": [-0.1]}, "every eta"),
    ],
)
def test_bad_settings_are_one_line_errors(settings, message):
    with pytest.raises(UebenchError, match=message) as error:
        certify_accuracies([50.0] * 10, **settings)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------
# The smoothed evaluations


def _tiny_data(n=40):
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 3, (n,), generator=generator)
    return x, y


def test_draws_perturb_trainable_parameters_only_and_leave_the_model_unchanged(tiny_cnn):
    model, (x, y) = tiny_cnn(), _tiny_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accuracies = smoothed_accuracies(model, x, y, n=3, sigma=0.5, seed=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    # The first draw by hand: θ + σ·ε over named_parameters (in order), buffers untouched.
    generator = torch.Generator().manual_seed(7)
    params = dict(model.named_parameters())
    flat = torch.randn(sum(p.numel() for p in params.values()), generator=generator)
    manual = tiny_cnn()
    with torch.no_grad():
        sizes = [p.numel() for p in params.values()]
        for param, chunk in zip(manual.parameters(), flat.split(sizes), strict=True):
            param.add_(0.5 * chunk.view(param.shape))
        predicted = manual(x.float() / 255).argmax(1)
    assert accuracies[0] == pytest.approx(100.0 * float((predicted == y).double().mean()))


def test_sigma_zero_gives_the_unperturbed_accuracy_and_batching_does_not_change_draws(tiny_cnn):
    model, (x, y) = tiny_cnn(), _tiny_data()
    with torch.no_grad():
        base = 100.0 * float((model(x.float() / 255).argmax(1) == y).double().mean())
    assert smoothed_accuracies(model, x, y, n=4, sigma=0.0) == [base] * 4
    one = smoothed_accuracies(model, x, y, n=7, sigma=0.3, seed=2, batch_draws=1)
    three = smoothed_accuracies(model, x, y, n=7, sigma=0.3, seed=2, batch_draws=3)
    split = smoothed_accuracies(model, x, y, n=7, sigma=0.3, seed=2, eval_batch_size=16)
    assert one == three == split
    assert one != smoothed_accuracies(model, x, y, n=7, sigma=0.3, seed=3)
    assert len(set(one)) > 1  # σ = 0.3 does move the accuracy


def test_certificate_roundtrips_and_plots(tmp_path, tiny_cnn):
    model, (x, y) = tiny_cnn(), _tiny_data()
    certificate = certify_model(model, x, y, n=30, q=0.5, etas=[0.0, 0.05, 0.5])
    again = Certificate.from_dict(json.loads(json.dumps(certificate.to_dict())))
    assert again == certificate
    assert certificate.table()["certified_acc"].isna().tolist() == [False, False, True]
    path = plot_certificates({"tiny": certificate}, tmp_path / "c.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------
# The CLI on a grid cell and a poison file

EMIN = "emin:form=class:max_rounds=2:model_steps=2:source=[smallcnn:width=4]"


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_grid):
    out = tmp_path_factory.mktemp("certify") / "run"
    run_grid(GridConfig(methods=[EMIN], out=str(out), save_models=True, **tiny_grid))
    (record,) = (out / "cells").glob("*.json")
    return out, record


def test_cli_certifies_a_cells_victim_and_its_surrogate(grid, capsys):
    out, record = grid
    cell_id = record.stem
    assert main(["certify", str(record), "-n", "30", "--q", "0.5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "certified (q=0.5" in printed and "abstain" in printed
    saved = json.loads((out / "certify" / f"{cell_id}-victim.json").read_text())
    assert saved["n"] == 30 and saved["meta"]["model"] == "victim"
    assert (out / "certify" / f"{cell_id}-victim.png").exists()
    assert (out / "certify" / f"{cell_id}-victim.csv").exists()

    args = ["certify", str(record), "--model", "surrogate", "-n", "10", "--no-plot"]
    assert main([*args, "--no-progress"]) == 0
    surrogate = json.loads((out / "certify" / f"{cell_id}-surrogate.json").read_text())
    assert surrogate["meta"]["arch"] == "smallcnn:width=4"
    # The surrogate differs from the victim: it was trained by the crafting loop.
    assert (
        surrogate["base_acc"] != saved["base_acc"]
        or surrogate["accuracies"][:10] != (saved["accuracies"][:10])
    )

    poison = json.loads(record.read_text())
    key = poison["poison"]["cache_key"]
    poison_file = out.parent / "cache" / f"{key}.pt"
    args = ["certify", str(poison_file), "--dataset", "digits:size=8", "--train-size", "200"]
    assert main([*args, "--test-size", "100", "-n", "10", "--no-plot", "--no-progress"]) == 0
    direct = json.loads((out.parent / "cache" / "certify" / f"{key}.json").read_text())
    assert direct["accuracies"] == surrogate["accuracies"]


def test_cli_errors_are_one_line(grid, tmp_path, capsys):
    _, record = grid
    assert main(["certify", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bare = json.loads(record.read_text())
    bare["model_path"] = None
    no_model = tmp_path / "bare.json"
    no_model.write_text(json.dumps(bare))
    assert main(["certify", str(no_model), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--save-models" in error and error.count("\n") == 1
    assert main(["certify", str(record), "--q", "1.5", "-n", "5", "--no-progress"]) == 2
    assert "q must be in" in capsys.readouterr().err


def test_cli_refuses_a_saved_model_that_is_not_the_one_trained(grid, tmp_path, capsys):
    _, record = grid
    saved = json.loads(record.read_text())
    assert len(saved["model_sha256"]) == 64
    state = torch.load(saved["model_path"], weights_only=True)
    tampered = tmp_path / "model.pt"
    torch.save({name: value * 1e6 if value.is_floating_point() else value
                for name, value in state.items()}, tampered)  # fmt: skip
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**saved, "model_path": str(tampered)}))
    assert main(["certify", str(forged), "-n", "5", "--no-progress", "--no-plot"]) == 2
    error = capsys.readouterr().err
    assert "is not the one cell" in error and error.count("\n") == 1


def _refusing(work: str):
    """A stand-in for ``work`` that fails the test: the refusal must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"certify {work} before refusing its input")

    return refuse


def test_an_output_folder_blocked_by_a_file_fails_before_any_draw(
    grid, tmp_path, capsys, monkeypatch
):
    _, record = grid
    monkeypatch.setattr("uebench.cli.certify.certify_model", _refusing("drew weights"))
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    flags = ["-n", "5", "--no-progress"]
    message = one_line_error(capsys, main(["certify", str(record), *flags, "--out", str(blocker)]))
    assert message == f"uebench: error: certify --out: {blocker} is a file, not a folder"
    below = blocker / "sub"
    message = one_line_error(capsys, main(["certify", str(record), *flags, "--out", str(below)]))
    assert message == f"uebench: error: certify --out: cannot create {below}: {blocker} is a file"
    # The default folder, RUN_DIR/certify, is checked alike.
    copy = tmp_path / "run" / "cells" / record.name
    copy.parent.mkdir(parents=True)
    shutil.copy(record, copy)
    default = tmp_path / "run" / "certify"
    default.write_text("mine")
    message = one_line_error(capsys, main(["certify", str(copy), *flags]))
    assert message == f"uebench: error: certify: {default} is a file, not a folder"
    assert blocker.read_text() == "mine" and default.read_text() == "mine"


def test_poisoned_images_are_refused_as_such_and_a_damaged_cache_file_as_corrupt(
    grid, tmp_path, capsys, monkeypatch
):
    out, record = grid
    monkeypatch.setattr("uebench.cli.certify.load_dataset", _refusing("loaded the dataset"))
    images = np.zeros((200, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "poisoned.npz", x_train=images)
    np.save(tmp_path / "poisoned.npy", images)
    torch.save(torch.zeros(200, 3, 8, 8), tmp_path / "tensor.pt")
    torch.save({"delta": torch.zeros(200, 3, 8, 8)}, tmp_path / "delta.pt")
    accepts = "certify reads a cell record (.json) or a poison-cache file (<cache>/<key>.pt)"
    for name in ("poisoned.npz", "poisoned.npy", "tensor.pt", "delta.pt"):
        path = tmp_path / name
        message = one_line_error(capsys, main(["certify", str(path), "--no-progress"]))
        assert message.startswith(f"uebench: error: {accepts}; {path} is a ."), message
        assert "poisoned images" in message and f"file:path={path}" in message
        assert "corrupt" not in message
    saved = json.loads(record.read_text())
    message = one_line_error(capsys, main(["certify", saved["model_path"], "--no-progress"]))
    assert "holds a model's weights" in message and "cell record" in message
    cache_file = out.parent / "cache" / f"{saved['poison']['cache_key']}.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(cache_file.read_bytes()[:-100])
    message = one_line_error(capsys, main(["certify", str(truncated), "--no-progress"]))
    assert f"poison file {truncated} is corrupt" in message
    # A cache file whose numbers were altered still loads with torch, and is corrupt too.
    payload = torch.load(cache_file, weights_only=True)
    tampered = tmp_path / "tampered.pt"
    torch.save({**payload, "delta": payload["delta"] + 1}, tampered)
    message = one_line_error(capsys, main(["certify", str(tampered), "--no-progress"]))
    assert f"poison file {tampered} is corrupt" in message
