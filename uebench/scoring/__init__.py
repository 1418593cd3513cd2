"""How a method is scored against the strongest data thief.

``suites`` reads the versioned countermeasure suites (``suites.toml``); ``score`` turns a
method's accuracies under a suite into its worst case (the highest accuracy any countermeasure
of the suite reaches) and its ranks; ``findings`` says which countermeasures a method falls to.
Leaderboards and reports (:mod:`uebench.results`) and ``uebench bench``
(:mod:`uebench.benchmark`) both use them; this package uses neither.
"""
