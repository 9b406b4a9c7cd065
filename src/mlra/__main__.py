"""``python -m mlra``: the same as the ``mlra`` command."""

import sys

from mlra.cli import main

if __name__ == "__main__":  # not when a spawned rank imports this module as __mp_main__
    sys.exit(main())
