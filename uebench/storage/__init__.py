"""What uebench keeps on disk and reads back, beyond the safe writes of :mod:`uebench.files`:

* :mod:`~uebench.storage.cache`: crafted poisons and trained source models, each keyed by a hash
  of everything that determines it;
* :mod:`~uebench.storage.records`: a cell's record (``RUN_DIR/cells/<id>.json``), read and
  checked the same way by every reader;
* :mod:`~uebench.storage.poison_files`: poisoned training sets as files other tools wrote or
  read (``.npz``, ``.npy``, ``.pt``, PNG/JPEG folders);
* :mod:`~uebench.storage.numpy_files`: numpy files read without trusting their headers.
"""
