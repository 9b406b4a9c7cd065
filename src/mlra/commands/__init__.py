"""Sub-commands of the ``mlra`` CLI, one module each (see :mod:`mlra.cli`)."""
