"""``python -m salsa_lib.evaluation``: the old name, kept for the command line.

The module is salsa_lib.stages.evaluation; this re-exports its main and runs it under __main__.
"""

import sys

from salsa_lib.stages.evaluation import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
