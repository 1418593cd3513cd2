"""The results side: turning cell records into tables, checks and pictures.

* :mod:`~uebench.results.leaderboard`: records from run folders, aggregated over seeds, ranked
  and pivoted (``uebench leaderboard``);
* :mod:`~uebench.results.references`: numbers reported in papers, as data, and measured numbers
  compared with them (``uebench compare``);
* :mod:`~uebench.results.regression`: the pytest plugin that turns reference numbers into test
  cases (``pytest -p uebench.regression``);
* :mod:`~uebench.results.report`: one HTML or Markdown page of tables and plots
  (``uebench report``), drawn by :mod:`~uebench.results.plots`.

Nothing here runs a grid's cells except the regression plugin, which runs a reference's cell
through :func:`uebench.grid.run_grid`; nothing below (grids, the cache, plugins) imports this.
"""
