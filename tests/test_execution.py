"""How a model runs (channels-last memory, torch.compile, the evaluation batch, bf16 on a CPU)
changes neither what a cell computes, beyond float noise, nor its id."""

import pytest
import torch

from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.execution import COMPILE_ENV, CPU_BF16_ENV, Execution, execution_for
from uebench.grid.config import GridConfig
from uebench.method import CraftContext
from uebench.registry import ARCHS
from uebench.training import TrainConfig, accuracy, predict, train

CPU = torch.device("cpu")
#: How far (in accuracy points) one cell's per-epoch test accuracy may move between two
#: executions: float results differ between kernels (summation order, fused operations), and
#: training carries the difference on.  On this cell one torch thread against two moved the
#: curve by at most 0.6 points, channels-last by 0.7, compiled by 1.0 (four epochs reaching
#: about 67%); the same cell on another seed moves it by more than 5.
TOLERANCE = 3.0


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", None, 1000, 300, seed=0)


def curve(data, execution: Execution, seed: int = 0) -> list[float]:
    """The per-epoch clean test accuracy of one seeded training run under ``execution``."""
    torch.manual_seed(seed)
    model = ARCHS.build("smallcnn:width=16", data.num_classes, data.image_shape)
    config = TrainConfig(epochs=4, batch_size=50, lr=0.02)
    history = train(
        model,
        data.x_train,
        data.y_train,
        config,
        CPU,
        test=(data.x_test, data.y_test),
        generator=torch.Generator().manual_seed(seed),
        execution=execution,
    )
    final = accuracy(model, data.x_test, data.y_test, CPU, 1024, True, 0, execution)
    assert final == history[-1].test_acc  # the same model evaluated the same way
    return [stats.test_acc for stats in history]


def test_the_executions_train_the_same_curve_within_float_noise(data):
    plain = curve(data, Execution())
    assert plain[-1] > 50  # it learns: a curve worth comparing
    for execution in (
        Execution(channels_last=True),
        Execution(compile=True),
        Execution(channels_last=True, compile=True),
        Execution(channels_last=True, eval_chunk=64),
    ):
        other = curve(data, execution)
        moved = max(abs(a - b) for a, b in zip(plain, other, strict=True))
        assert moved <= TOLERANCE, (execution, plain, other)


def test_bf16_on_a_cpu_ends_where_fp32_does_within_a_cpus_float_order(data):
    """bf16 rounds every convolution's inputs, so it moves a curve more than a kernel choice
    (on this cell, seeds 0-3: an epoch's accuracy by up to 6.7 points against channels-last's
    4.0), but not where training ends on it: over three seeds the mean final accuracy stays
    within 2 points, the least tolerance a reference gives a cell."""
    fp32 = Execution(channels_last=True)
    bf16 = Execution(channels_last=True, cpu_bf16=True)
    finals = {ex: [curve(data, ex, seed)[-1] for seed in range(3)] for ex in (fp32, bf16)}
    assert min(finals[fp32]) > 50, finals  # it learns
    means = {ex: sum(values) / len(values) for ex, values in finals.items()}
    assert abs(means[bf16] - means[fp32]) <= 2.0, finals


def test_execution_is_not_part_of_a_cell_id():
    ids = {
        compile: GridConfig(methods=["clean"], compile=compile).cells()[0].cell_id
        for compile in (None, False, True)
    }
    assert len(set(ids.values())) == 1


def check_switch(monkeypatch, name: str, read) -> None:
    """``name`` set to 1 turns ``read()`` on, 0 off, anything else is a one-line error."""
    monkeypatch.setenv(name, "1")
    assert read()
    monkeypatch.setenv(name, "0")
    assert not read()
    monkeypatch.setenv(name, "sometimes")
    with pytest.raises(UebenchError, match=f"{name} must be 0 or 1"):
        read()


def test_the_compile_choice_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert execution_for(CPU, True).compile and not execution_for(CPU, False).compile
    check_switch(monkeypatch, COMPILE_ENV, lambda: execution_for(CPU).compile)
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert not execution_for(CPU, False).compile  # the flag wins


def test_a_compiled_model_predicts_a_set_not_divisible_by_the_batch(data):
    torch.manual_seed(0)
    model = ARCHS.build("smallcnn:width=4", data.num_classes, data.image_shape).eval()
    plain = accuracy(model, data.x_test[:250], data.y_test[:250], CPU, 100)
    compiled = accuracy(
        model, data.x_test[:250], data.y_test[:250], CPU, 100, execution=Execution(compile=True)
    )
    assert abs(plain - compiled) <= 0.4  # at most one of 250 images on a float tie


def test_a_cpu_evaluates_in_chunks_and_a_gpu_does_not():
    assert execution_for(CPU).eval_batch(1024) == 128
    assert execution_for(CPU).eval_batch(50) == 50
    assert execution_for(torch.device("cuda")).eval_batch(1024) == 1024
    assert Execution().eval_batch(1024) == 1024


def test_an_evaluation_in_chunks_predicts_the_same_labels(data):
    torch.manual_seed(0)
    model = ARCHS.build("smallcnn:width=8", data.num_classes, data.image_shape)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _, inputs: sizes.append(len(inputs[0])))
    whole = predict(model, data.x_test[:100], CPU, 1024, tta=2)
    assert sizes == [100] * 6  # TTA: six passes
    sizes.clear()
    chunked = predict(
        model, data.x_test[:100], CPU, 1024, tta=2, execution=Execution(eval_chunk=32)
    )
    assert sizes == [32] * 6 + [32] * 6 + [32] * 6 + [4] * 6
    assert float((whole == chunked).float().mean()) >= 0.99  # a float tie at most
    assert model.training  # handed back in the mode it came in


def test_a_bad_switch_is_refused_when_the_grid_is_planned(monkeypatch, tmp_path):
    for name in (COMPILE_ENV, CPU_BF16_ENV):
        monkeypatch.setenv(name, "maybe")
        with pytest.raises(UebenchError, match=f"{name} must be 0 or 1"):
            GridConfig(methods=["clean"], out=str(tmp_path / "run")).cells()
        monkeypatch.delenv(name)
    assert not (tmp_path / "run").exists()


def test_bf16_on_a_cpu_only_when_the_environment_asks(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    assert not execution_for(CPU).cpu_bf16
    check_switch(monkeypatch, CPU_BF16_ENV, lambda: execution_for(CPU).cpu_bf16)
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert not execution_for(torch.device("cuda")).cpu_bf16  # CUDA's bf16 is amp's, always


def test_a_victim_trains_in_bf16_on_such_a_cpu_and_crafting_never_does(data):
    bf16 = Execution(channels_last=True, cpu_bf16=True)
    dtypes: list[torch.dtype] = []
    model = ARCHS.build("smallcnn:width=4", data.num_classes, data.image_shape)
    model.register_forward_hook(lambda _, __, out: dtypes.append(out.dtype))
    predict(model, data.x_test[:10], CPU, 10, execution=bf16)
    assert dtypes == [torch.bfloat16]
    assert bf16.precision(CPU, True) == "bf16" and bf16.precision(CPU, False) == "fp32"
    assert Execution().precision(CPU, True) == "fp32"
    assert Execution().precision(torch.device("cuda"), True) == "bf16"
    ctx = CraftContext(CPU, execution=bf16)
    assert not ctx.execution.cpu_bf16 and ctx.execution.channels_last
    dtypes.clear()
    predict(model, data.x_test[:10], CPU, 10, execution=ctx.execution)
    assert dtypes == [torch.float32]
