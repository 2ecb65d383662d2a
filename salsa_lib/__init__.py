"""salsa_lib: the package behind the SALSA companion notebooks (one module per pipeline stage)."""

__version__ = "0.1.0"
