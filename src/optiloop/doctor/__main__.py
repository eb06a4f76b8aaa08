"""``python -m optiloop.doctor [--out DIR] SCRIPT [ARGS...]``: the same as ``optiloop doctor``."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
