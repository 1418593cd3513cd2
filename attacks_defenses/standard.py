"""``none``: standard training (random crop + flip only), the baseline column of every grid."""

from uebench.countermeasure import Countermeasure


class StandardTraining(Countermeasure):
    """No countermeasure: every hook keeps its default."""
