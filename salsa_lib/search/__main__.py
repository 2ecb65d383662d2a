"""``python -m salsa_lib.search``: the search command line (salsa_lib.search.cli)."""

import sys

from salsa_lib.search.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
