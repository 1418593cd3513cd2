"""The mini-protocol numbers uebench measured itself (leaderboard/references/uebench-mini.csv),
rerun from their recorded command and held to their recorded tolerance (about 90 s on a 2-core
CPU).  A change that breaks the harness or the error-minimizing method moves one of them out of
tolerance: class-wise error-minimizing noise must keep cutting accuracy well below clean
training (every seed of clean and of class-wise random noise measured at >= 91.0%, the accepted
range for the noise ends at 83.0%).  With ``--uebench-results DIR`` the numbers are read instead.

The earlier rows (65.4% for class-wise noise on the image-split layout, "one thread") did not
reproduce from their recorded command at any commit back to the one that added them (84.0% at
torch's default threads, 84.4% at one), so they were replaced by these, measured on the current
default dataset and protocol.
"""

import pytest

from uebench.regression import reference_params


@pytest.mark.parametrize("reference", reference_params("uebench-mini"))
def test_mini_protocol_reference(reference, uebench_check):
    uebench_check(reference)
