"""``uebench bench``: a method placed among the field's under a fixed countermeasure suite.

``table`` builds the bench table (the new method beside the shipped field rows, scored by
:mod:`uebench.scoring`); ``inputs`` turns in-memory poisons into a method spec; ``runner``
runs a bench; ``reference`` writes a finished run as a reference file.  The package is not
named ``bench``: that is the Python API's function, :func:`uebench.bench`.
"""
