"""``python -m hareid``: the same command line as ``hareid``."""

import sys

from hareid.cli import main

if __name__ == "__main__":
    sys.exit(main())
