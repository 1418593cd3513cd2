"""Adversarial training undoes class-wise error-minimizing noise (Section 4.2), on the CPU.

The default faint digits (contrast 0.2) cannot be learned by ε=8/255 adversarial training at
all, clean or poisoned (measured: 10% at every one of 20 epochs), so this check uses digits at
contrast 0.5, which adversarial training learns.  At that contrast the paper's un-augmented
class-wise noise has no effect (96.6% against 95.6% clean), because the victim's 2-px crop
moves it; noise crafted through the crop (``augment=true``) holds standard training to 70.2%.

Measured on this 2-core CPU (victim resnet18:width=16, 20 epochs, seed 0, one thread):
standard training 70.2%, adversarial training (3 PGD steps of 3/255 in ε=8/255) 88.1%,
clean data 95.6%.  About three minutes.
"""

import pytest

from uebench.grid import GridConfig, run_grid

# Superseded in the default run by tests/test_headline.py (adversarial training rescues
# sample-wise noise on today's default); kept for class-wise noise, with ``pytest -m slow``.
pytestmark = pytest.mark.slow

ARCH = "resnet18:width=16"
EMIN_CLASS = f"emin:form=class:augment=true:source=[{ARCH}]"
ADVTRAIN = "advtrain:steps=3:alpha=3/255"


@pytest.fixture(scope="module")
def final_acc(tmp_path_factory):
    out = tmp_path_factory.mktemp("advtrain")
    table = run_grid(
        GridConfig(
            # The image-split layout and protocol these numbers were measured with.
            dataset="cluttered-digits:contrast=0.5:split=image:digit_size=8:clutter=0.3",
            protocol="paper",
            methods=[EMIN_CLASS],
            defenses=["none", ADVTRAIN],
            archs=[ARCH],
            out=str(out / "grid"),
            device="cpu",
            progress=False,
        )
    )
    return table.set_index("defense")["final_acc"]


def test_classwise_noise_holds_standard_training_down(final_acc):
    assert final_acc["none"] <= 80.0


def test_adversarial_training_recovers_accuracy(final_acc):
    assert final_acc[ADVTRAIN] >= 75.0
    assert final_acc[ADVTRAIN] >= final_acc["none"] + 10
