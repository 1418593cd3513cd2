"""What uebench measures about a poison and a trained model besides clean accuracy:

* :mod:`~uebench.analysis.baseline`: the accuracy of guessing, and whether clean training
  learned enough for its setting to show what noise does;
* :mod:`~uebench.analysis.diagnostics`: per-class accuracy, backdoor success, shortcut
  separability and learning speed;
* :mod:`~uebench.analysis.certify`: certified (q, η)-learnability by parametric smoothing.
"""
