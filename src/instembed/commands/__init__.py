"""Sub-commands of the ``instembed`` CLI; see :mod:`instembed.cli` for the module contract."""
