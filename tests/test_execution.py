"""How a model runs (channels-last memory, torch.compile, the evaluation batch) changes neither
what a cell computes, beyond float noise, nor its id."""

import pytest
import torch

from uebench.datasets import load_dataset
from uebench.errors import UebenchError
from uebench.execution import COMPILE_ENV, Execution, execution_for
from uebench.grid.config import GridConfig
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


def curve(data, execution: Execution) -> list[float]:
    """The per-epoch clean test accuracy of one seeded training run under ``execution``."""
    torch.manual_seed(0)
    model = ARCHS.build("smallcnn:width=16", data.num_classes, data.image_shape)
    config = TrainConfig(epochs=4, batch_size=50, lr=0.02)
    history = train(
        model,
        data.x_train,
        data.y_train,
        config,
        CPU,
        test=(data.x_test, data.y_test),
        generator=torch.Generator().manual_seed(0),
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


def test_execution_is_not_part_of_a_cell_id():
    ids = {
        compile: GridConfig(methods=["clean"], compile=compile).cells()[0].cell_id
        for compile in (None, False, True)
    }
    assert len(set(ids.values())) == 1


def test_the_compile_choice_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert execution_for(CPU, True).compile and not execution_for(CPU, False).compile
    monkeypatch.setenv(COMPILE_ENV, "1")
    assert execution_for(CPU).compile and not execution_for(CPU, False).compile
    monkeypatch.setenv(COMPILE_ENV, "0")
    assert not execution_for(CPU).compile
    monkeypatch.setenv(COMPILE_ENV, "sometimes")
    with pytest.raises(UebenchError, match="UEBENCH_COMPILE must be 0 or 1"):
        execution_for(CPU)


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
