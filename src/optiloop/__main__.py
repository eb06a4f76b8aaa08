"""``python -m optiloop``: the same command line as the ``optiloop`` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
