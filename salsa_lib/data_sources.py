"""``python -m salsa_lib.data_sources``: the old name, kept for the command line.

The module is salsa_lib.data.data_sources; this re-exports its main and runs it under __main__.
"""

from salsa_lib.data.data_sources import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
