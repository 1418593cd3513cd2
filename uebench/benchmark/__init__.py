"""``uebench bench``: a method placed among the field's under a fixed countermeasure suite.

``suites`` reads the versioned countermeasure suites (``suites.toml``); ``score`` turns a
method's accuracies under a suite into its worst case (the strongest thief) and its ranks;
``findings`` says which countermeasures a method falls to; ``table`` builds the bench table
(the new method beside the shipped field rows); ``inputs`` turns in-memory poisons into a
method spec; ``runner`` runs a bench; ``reference`` writes a finished run as a reference file.

The modules are imported one by one (this file imports none), so ``uebench.results`` can use
the scoring without importing the runner.  The package is not named ``bench``: that is the
Python API's function, :func:`uebench.bench`.
"""
